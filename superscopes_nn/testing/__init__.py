"""Helpers for tests only: tiny random models of every family (tiny_models) and the plain-HF forward-hook
reference the patched runs are checked against (hook_reference). No library module imports them."""
