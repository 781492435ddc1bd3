"""Preflight (superscopes_nn.remote.preflight): served? same nnsight? One line otherwise, nothing sent.

Against a fake NDIF on 127.0.0.1 answering ``GET /status`` and ``GET /env`` with bodies shaped as
NDIF publishes them and nnsight 0.8.1 reads them (``nnsight/ndif.py``: ``status`` / ``is_model_running``
read ``deployments -> {repo_id, revision, application_state, deployment_level}``; ``compare`` reads
``python_version`` and ``packages``). Never a live host.
"""

import nnsight
import pytest

from fake_ndif import FakeNDIF
from superscopes_nn import sweep
from superscopes_nn.remote import preflight as pf
from superscopes_nn.remote.errors import NDIFError
from superscopes_nn.structure.testing import save_tiny_checkpoint

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


def test_a_remote_run_preflights_before_its_first_request(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "PREFLIGHT", True)
    d = tmp_path / "tiny"
    save_tiny_checkpoint(d, "llama")
    from nnsight.modeling import huggingface

    from superscopes_nn import load_model

    huggingface._ID_CACHE[str(d)] = str(d)
    model = load_model(str(d))
    with FakeNDIF(status=status(("someone/else", "main", "RUNNING")), env=ENV) as fake:
        with pytest.raises(NDIFError, match=f"NDIF at {fake.url}: {d} \\(revision main\\) is not served"):
            sweep(model, "Pink Floyd", layers=1, remote=fake.url, progress=False)
        assert fake.counts["/status"] == 1 and fake.counts["request"] == 0  # refused before any POST
