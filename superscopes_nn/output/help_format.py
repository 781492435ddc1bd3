"""``--help`` that shows defaults: the formatter of ``superscopes explain / demo / plan`` and the experiment scripts."""

from __future__ import annotations

import argparse


class DefaultsFormatter(argparse.HelpFormatter):
    """``--help`` with each flag's default, unless its help already names it or it has none (None / off)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".strip()
