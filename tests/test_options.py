"""RunOptions (superscopes_nn.core.options): one frozen object for how a run runs, built from arguments once."""

import argparse
import dataclasses

import pytest

from superscopes_nn.core.options import RunOptions, options_from_args, parse_remote
from superscopes_nn.output.cli import build_parser


def test_options_are_frozen_and_fields_are_checked():
    opts = RunOptions(max_batch_size=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.max_batch_size = 4
    assert RunOptions.of(opts, exact=True) == RunOptions(max_batch_size=8, exact=True) and opts.exact is False
    with pytest.raises(TypeError, match="unknown run option batch_size; RunOptions has"):
        RunOptions.of(opts, batch_size=4)
    with pytest.raises(TypeError, match="options must be a RunOptions"):
        RunOptions.of({"max_batch_size": 4})
    assert RunOptions().with_defaults(max_new_tokens=50).max_new_tokens == 50
    assert RunOptions(max_new_tokens=3, progress=False).with_defaults(max_new_tokens=50, progress=True) == \
        RunOptions(max_new_tokens=3, progress=False)


@pytest.mark.parametrize("given, want", [(False, False), (True, True), ("false", False), ("ndif", True),
                                         ("local", "local"), ("https://h.example", "https://h.example")])
def test_remote_is_kept_as_given(given, want):
    assert parse_remote(given) == want
    assert RunOptions(remote=want).ndif is (want not in (False, "local"))


def test_one_helper_reads_the_cli_and_the_scripts():
    cli = build_parser().parse_args(["explain", "x", "--max-batch-size", "4", "--remote", "local", "--no-progress",
                                     "--max-new-tokens", "3"])
    assert options_from_args(cli, run_dir="d") == RunOptions(max_new_tokens=3, max_batch_size=4, remote="local",
                                                            progress=False, run_dir="d")
    from experiments.common import parser

    script = parser("x", out="o").parse_args(["--max-batch-size", "2", "--remote", "--resume"])
    assert options_from_args(script) == RunOptions(max_new_tokens=10, max_batch_size=2, remote=True, progress=False,
                                                   resume=True)
    assert options_from_args(argparse.Namespace(), progress=True) == RunOptions(progress=True)
