"""One vocabulary across the API and the CLI: ``position`` (the source position), ``sites``, ``alphas``,
``max_batch_size`` and one layer grammar; the earlier spellings still work for one release, each with a
one-line DeprecationWarning (and one ``warning:`` line on stderr from the command line)."""

import warnings

import pytest

from superscopes_nn import Target, sweep, sweep_rows
from superscopes_nn.core.layers import parse_layers, resolve_layers
from superscopes_nn.core.store import row_key
from superscopes_nn.science.random_control import random_vector_rows
from superscopes_nn.science.superscopes import superscope


TINY_MODEL = ("llama", 1)


def _deprecated(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    dep = [w for w in got if issubclass(w.category, DeprecationWarning)]
    assert len(dep) == 1 and "\n" not in str(dep[0].message), [str(w.message) for w in got]
    return out, str(dep[0].message)


def test_old_keywords_give_the_same_rows_with_one_warning(model):
    new = sweep_rows(model, ["Pink Floyd"], layers=[1], alphas=[1, 2], position="Floyd")
    old, msg = _deprecated(sweep_rows, model, ["Pink Floyd"], layers=[1], alphas=[1, 2], token="Floyd")
    assert [row_key(r) for r in old] == [row_key(r) for r in new]
    assert msg == "sweep_rows(token=) is deprecated: use position= (accepted until the next release)"
    new = random_vector_rows(model, ["Pink Floyd"], layers=[1], alphas=[1], site="mlp_out", target=Target(), positions=0)
    old, msg = _deprecated(random_vector_rows, model, ["Pink Floyd"], layers=[1], alphas=[1], site="mlp_out",
                           target=Target(), tokens=0)
    assert [r.source_key for r in old] == [r.source_key for r in new] and "use positions=" in msg
    with pytest.raises(ValueError, match="pass position= only"):
        sweep_rows(model, ["Pink Floyd"], layers=[1], position=0, token=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'tokens'"):
        sweep_rows(model, ["Pink Floyd"], layers=[1], tokens=1)


def test_old_keywords_of_the_public_calls(model):
    kw = dict(layers=[1], alphas=[1], max_new_tokens=1, progress=False)
    new = sweep(model, "Pink Floyd", position=0, **kw)
    old, msg = _deprecated(sweep, model, "Pink Floyd", token=0, **kw)
    assert old.equals(new) and msg.startswith("sweep(token=) is deprecated")
    new = superscope(model, "Pink Floyd", sites="residual", position=0, **kw)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        old = superscope(model, "Pink Floyd", site="residual", token=0, **kw)
    assert old.equals(new)
    assert sorted(str(w.message).split("(")[1] for w in got if issubclass(w.category, DeprecationWarning)) == [
        "site=) is deprecated: use sites= ", "token=) is deprecated: use position= "]


@pytest.mark.parametrize("old, new, value, dest", [
    ("--token", "--position", "Great", "position"), ("--site", "--sites", "residual", "sites"),
    ("--amps", "--alphas", "1,6", "alphas"), ("--batch-size", "--max-batch-size", "4", "max_batch_size"),
])
def test_old_cli_flags_are_one_stderr_line(capsys, old, new, value, dest):
    from superscopes_nn.output import plan_cli
    from superscopes_nn.output import cli

    for parser, head in ((cli.build_parser(), ["explain", "x"]), (plan_cli.build_parser(cli), ["m"])):
        got = parser.parse_args(head + [old, value])
        want = parser.parse_args(head + [new, value])
        assert getattr(got, dest) == getattr(want, dest) == (int(value) if dest == "max_batch_size" else value)
        assert capsys.readouterr().err == f"warning: {old} is deprecated: use {new} (accepted until the next release)\n"


def test_the_scripts_take_the_same_spellings(capsys):
    from experiments.common import parser

    p = parser("x", out="o", layers_help="layers")
    assert p.parse_args(["--batch-size", "3"]).max_batch_size == p.parse_args(["--max-batch-size", "3"]).max_batch_size
    assert "warning: --batch-size is deprecated: use --max-batch-size" in capsys.readouterr().err
    assert p.parse_args(["--layers", "-3--1"]).layers == "-3--1"  # a value starting with '-' is a value


@pytest.mark.parametrize("spec, layers", [("0-3", [0, 1, 2, 3]), ("1,3, 5", [1, 3, 5]), ("-3--1", [-3, -2, -1]),
                                          ("-2,-1", [-2, -1]), ("all", None), ("2", [2])])
def test_one_layer_grammar(spec, layers):
    assert parse_layers(spec) == layers
    from experiments.common import model_layers

    assert model_layers(spec, 8) == resolve_layers(layers, 8) == sorted({l % 8 for l in (layers or range(8))})


@pytest.mark.parametrize("spec", ["5--1", "3-1", "a", "1-"])
def test_a_bad_layer_spec_is_one_line(spec):
    with pytest.raises(ValueError, match=rf"^bad --layers {spec!r}: use e.g."):
        parse_layers(spec)
