"""Preflight (superscopes_nn.remote.preflight): served? same nnsight? One line otherwise, nothing sent.

Against a fake NDIF on 127.0.0.1 answering ``GET /status`` and ``GET /env`` with bodies shaped as
NDIF publishes them and nnsight 0.8.1 reads them (``nnsight/ndif.py``: ``status`` / ``is_model_running``
read ``deployments -> {repo_id, revision, application_state, deployment_level}``; ``compare`` reads
``python_version`` and ``packages``). Never a live host.
"""

import nnsight
import pytest

from fake_ndif import FakeNDIF
from superscopes_nn import collect, generate_plain, logit_lens, sweep
from superscopes_nn.engine import run as run_mod
from superscopes_nn.remote import preflight as pf
from superscopes_nn.remote.errors import NDIFError
from superscopes_nn.testing.tiny_models import save_tiny_checkpoint

REPO = "meta-llama/Llama-3.1-405B"


def status(*entries):
    """A recorded /status body: one entry per replica."""
    return {"deployments": {f"{repo}-{i}": {"model_key": f"nnsight.modeling.language.LanguageModel:{repo}",
                                             "repo_id": repo, "revision": rev, "deployment_level": "HOT",
                                             "application_state": state}
                            for i, (repo, rev, state) in enumerate(entries)}}


ENV = {"python_version": "3.12.3 (main)", "packages": {"nnsight": nnsight.__version__, "torch": "2.8.0"}}


class Key:
    def __init__(self, repo, revision=None):
        self.key = ('nnsight.modeling.transformers.TransformersModel:{"repo_id": "%s", "revision": %s, '
                    '"task": "text-generation"}' % (repo, "null" if revision is None else f'"{revision}"'))

    def to_model_key(self):
        return self.key


@pytest.mark.parametrize("body, env, match", [
    (status((REPO, "main", "RUNNING")), ENV, None),
    (status((REPO, "main", "DEPLOYING"), (REPO, "main", "RUNNING")), ENV, None),  # one running replica is enough
    (status((REPO, "main", "DEPLOYING")), ENV, f"{REPO} is deployed but not running \\(state DEPLOYING\\)"),
    (status(("openai-community/gpt2", "main", "RUNNING")), ENV,
     f"{REPO} \\(revision main\\) is not served \\(running: openai-community/gpt2\\)"),
    (status((REPO, "v2", "RUNNING")), ENV, "is not served"),
    (status((REPO, "main", "RUNNING")), {**ENV, "packages": {"nnsight": "0.5.9"}},
     f"client nnsight {nnsight.__version__} != server nnsight 0.5.9: pip install nnsight==0.5.9"),
    (status((REPO, "main", "RUNNING")), {"python_version": "3.12"}, "did not report its nnsight version"),
    (None, ENV, "cannot read GET /status"),
])
def test_preflight_against_recorded_responses(body, env, match):
    with FakeNDIF(status=body, env=env) as fake:
        if match is None:
            pf.preflight(Key(REPO), fake.url)
        else:
            with pytest.raises(NDIFError, match=match) as err:
                pf.preflight(Key(REPO), fake.url)
            assert "\n" not in str(err.value) and str(err.value).startswith(f"NDIF at {fake.url}: ")
        assert fake.counts["request"] == 0


def test_unreachable_host_is_one_line():
    with pytest.raises(NDIFError, match=r"NDIF at http://127.0.0.1:9: cannot read GET /status .*is the host right"):
        pf.preflight(Key(REPO), "http://127.0.0.1:9")


@pytest.fixture
def hub_model(tmp_path, monkeypatch):
    """A tiny checkpoint whose local dir stands in for its hub id (the id NDIF is sent)."""
    from nnsight.modeling import huggingface

    from superscopes_nn import load_model

    d = tmp_path / "tiny"
    save_tiny_checkpoint(d, "llama")
    monkeypatch.setitem(huggingface._ID_CACHE, str(d), str(d))
    return d, load_model(str(d))


def test_a_remote_run_preflights_before_its_first_request(hub_model, monkeypatch):
    monkeypatch.setattr(pf, "PREFLIGHT", True)
    d, model = hub_model
    with FakeNDIF(status=status(("someone/else", "main", "RUNNING")), env=ENV) as fake:
        with pytest.raises(NDIFError, match=f"NDIF at {fake.url}: {d} \\(revision main\\) is not served"):
            sweep(model, "Pink Floyd", layers=1, remote=fake.url, progress=False)
        assert fake.counts["/status"] == 1 and fake.counts["request"] == 0  # refused before any POST


RUNS = {  # the runs that are not rows: each is one session per request, and goes the same way
    "generate_plain": lambda m, r: generate_plain(m, ["Pink Floyd", "Star Wars"], max_new_tokens=2, remote=r),
    "collect": lambda m, r: collect(m, "Pink Floyd", [0, 1], remote=r),
    "logit_lens": lambda m, r: logit_lens(m, "Pink Floyd", layers=[0, 1], remote=r),
}


@pytest.mark.parametrize("name", RUNS)
def test_every_remote_run_preflights_once_before_its_first_request(hub_model, monkeypatch, capsys, name):
    from nnsight.intervention.backends.local import LocalSimulationBackend

    d, model = hub_model
    local = RUNS[name](model, False)
    monkeypatch.setattr(pf, "PREFLIGHT", True)
    monkeypatch.setattr(pf, "_DONE", set())
    events = []
    real = pf.preflight
    monkeypatch.setattr(pf, "preflight", lambda *a, **k: events.append("preflight") or real(*a, **k))
    # the send runs here (nnsight's serialization round trip), so the answer is checked, and counted
    monkeypatch.setattr(run_mod, "session_backend", lambda m, r, b: events.append("send") or LocalSimulationBackend(m))
    with FakeNDIF(status=status(("someone/else", "main", "RUNNING")), env=ENV) as fake:
        with pytest.raises(NDIFError, match=f"^NDIF at {fake.url}: {d} \\(revision main\\) is not served") as err:
            RUNS[name](model, fake.url)
        assert "\n" not in str(err.value)
        assert events == ["preflight"] and fake.counts["/status"] == 1 and fake.counts["request"] == 0
        assert "plan:" not in capsys.readouterr().err  # refused before the plan, and before any request
    events.clear()
    with FakeNDIF(status=status((str(d), "main", "RUNNING")), env=ENV) as fake:
        first, second = RUNS[name](model, fake.url), RUNS[name](model, fake.url)
        assert fake.counts["/status"] == fake.counts["/env"] == 1 and fake.counts["request"] == 0
    assert events[0] == "preflight" and events.count("preflight") == 1 and events.count("send") >= 2  # once per host
    assert repr(first) == repr(second) == repr(local)
    err = [line for line in capsys.readouterr().err.splitlines() if "NDIF" in line or "plan:" in line]
    assert len(err) == events.count("send") + 2 and err[0].startswith(f"[superscopes] plan: {d}, ")  # a plan a run
    assert all(e.startswith("[superscopes] NDIF request ") for e in err if "plan:" not in e)
