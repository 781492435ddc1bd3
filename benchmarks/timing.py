"""The one timing helper of every benchmark: warm-up, interleaved repeats, medians, pairwise ratios.

    from timing import Way, add_args, interleave, peak_rss_mb, report

    t = interleave([Way("library", lambda: run_rows(...)), Way("plain", lambda: plain(...))],
                   repeats=5, warmup=1)
    res = report(t, ratios={"ratio_vs_plain": ("library", "plain")})  # median of per-round ratios
    print(json.dumps(res))          # the JSON last line: medians, spread, ratios, load, RSS

Why this shape: on a shared machine a single timing moves by 2-3x with the other
processes' load. Timing each way once per *round* (A B A B ...) exposes every way to
the same drift, and a ratio taken *pair by pair* (way A's time of round k over way B's
time of round k; the median over k) cancels most of the drift that a ratio of two
medians keeps.

- :class:`Way`: a name, a zero-argument callable, and ``scale`` (the factor a round's
  time is multiplied by: e.g. a per-row loop timed on 12 of 180 rows has ``scale=15``).
  ``fn`` may take one argument, the round index (``-1`` .. ``-warmup`` for warm-up
  rounds, ``0 .. repeats-1`` for timed ones), so a way can time a different slice of
  its work each round (the loop benchmarks cover >= 60 rows over 5 rounds).
- :func:`interleave`: runs ``warmup`` untimed rounds, then ``repeats`` timed rounds,
  each round calling every way once in the given order; returns a :class:`Timing`.
- :func:`report`: the JSON-ready summary: ``median_s``, ``spread`` (each way's
  ``[min, max]``), ``ratios`` (median of per-round ratios, with their min/max), the load
  average before and after, the thread count and this process's peak RSS.
- :func:`child_peak_rss_mb` / :func:`run_child`: a command's own peak RSS (memory-flat checks
  in a fresh process, so one measurement cannot inherit another's high-water mark);
  :class:`RssSampler`: the RSS before a piece of work and its sampled peak during it.
- :func:`round_slices`: which items a per-item way times in each round.
- :func:`add_args` / :func:`setup`: the common ``--repeats --warmup --threads`` flags.

Threads: the benchmarks default to ``--threads 1``. On a machine whose load exceeds
its cores, OpenMP's barrier waits stall every op of a many-small-op workload (one
row's generation) whenever one of its threads is descheduled; measured here on 2 shared
cores, a single-row SmolLM2 generate took 10-16 s with 2 threads and 1.9 s with 1.
Pass ``--threads N`` on a quiet machine.
"""

from __future__ import annotations

import inspect
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


@dataclass
class Way:
    """One way of doing the work: ``fn()`` or ``fn(round_index)``; its time is multiplied by ``scale``."""

    name: str
    fn: Callable
    scale: float = 1.0

    def call(self, k: int) -> Any:
        try:
            n_params = len(inspect.signature(self.fn).parameters)
        except (TypeError, ValueError):
            n_params = 0
        return self.fn(k) if n_params else self.fn()


@dataclass
class Timing:
    """Per-way lists of (scaled) seconds, one per timed round, in round order."""

    times: dict = field(default_factory=dict)
    order: list = field(default_factory=list)  # (round, way name) in the order they ran, warm-up included
    results: dict = field(default_factory=dict)  # way name -> the last value its fn returned
    load_before: tuple = ()
    load_after: tuple = ()
    threads: int | None = None

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def spread(self, name: str) -> tuple:
        return min(self.times[name]), max(self.times[name])

    def pair_ratios(self, a: str, b: str) -> list:
        """``times[a][k] / times[b][k]`` for every round ``k``."""
        return [x / y for x, y in zip(self.times[a], self.times[b])]

    def ratio(self, a: str, b: str) -> float:
        """The median of the per-round ratios ``a / b`` (not the ratio of the medians)."""
        return statistics.median(self.pair_ratios(a, b))


def loadavg() -> tuple:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:  # pragma: no cover - platforms without getloadavg
        return ()


def torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def interleave(ways: Sequence[Way], repeats: int = 5, warmup: int = 1, clock: Callable[[], float] = time.perf_counter,
               progress: Callable[[str], None] | None = None) -> Timing:
    """Warm-up rounds, then ``repeats`` rounds of every way in order (A B A B ...)."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    names = [w.name for w in ways]
    if len(set(names)) != len(names):
        raise ValueError(f"way names must be distinct: {names}")
    t = Timing(times={w.name: [] for w in ways}, load_before=loadavg(), threads=torch_threads())
    for k in list(range(-warmup, 0)) + list(range(repeats)):
        for w in ways:
            t0 = clock()
            t.results[w.name] = w.call(k)
            dt = (clock() - t0) * w.scale
            t.order.append((k, w.name))
            if k >= 0:
                t.times[w.name].append(dt)
            if progress is not None:
                progress(f"{'warm-up' if k < 0 else f'round {k + 1}/{repeats}'} {w.name}: {dt:.2f} s")
    t.load_after = loadavg()
    return t


def round_slices(items: Sequence, repeats: int) -> tuple[Callable[[int], list], int]:
    """For a per-item way (a loop over rows) timed on a different part of ``items`` each round:
    ``(pick, per_round)``; ``pick(k)`` is every ``repeats``-th item from ``k`` (round ``k >= 0``;
    the first item in warm-up rounds), each round the same count ``per_round`` (the rest of
    ``items`` is dropped), so ``Way(..., scale=total / per_round)`` scales a round to all items."""
    per_round = max(1, len(items) // repeats)
    kept = list(items[: per_round * repeats])

    def pick(k: int) -> list:
        return kept[:1] if k < 0 else kept[k % len(kept)::repeats][:per_round]
    return pick, per_round


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def run_child(argv: Sequence[str], env: dict | None = None) -> tuple[float, str]:
    """Run ``argv`` to completion in a fresh process: ``(its own peak RSS in MiB, its stdout)``."""
    proc = subprocess.Popen(list(argv), env=env, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}")
    return round(usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1), out


def child_peak_rss_mb(argv: Sequence[str], env: dict | None = None) -> float:
    """Run ``argv`` to completion in a fresh process and return *its* peak RSS in MiB."""
    return run_child(argv, env)[0]


def current_rss_mb() -> float:
    """This process's resident set size now, in MiB (Linux ``/proc``; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except OSError:  # pragma: no cover - no /proc
        return peak_rss_mb()


class RssSampler:
    """``with RssSampler() as s: work()`` -> ``s.start_mb``, ``s.peak_mb``: the RSS before and the
    highest RSS sampled (every ``interval`` s) during the work. Unlike ``ru_maxrss`` it is not
    masked by a higher peak before the work (a model load's conversion)."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.start_mb, self.peak_mb = interval, 0.0, 0.0

    def __enter__(self):
        import threading

        self.start_mb = self.peak_mb = current_rss_mb()
        self._stop = threading.Event()

        def run():
            while not self._stop.wait(self.interval):
                self.peak_mb = max(self.peak_mb, current_rss_mb())
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, current_rss_mb())
        return False


def _r(x: float, nd: int = 3) -> float:
    return round(float(x), nd)


def report(t: Timing, ratios: dict | None = None) -> dict:
    """The summary dict: ``median_s``, ``spread`` ({way: [min, max]}), ``ratios`` ({name: median
    of per-round ratios}), ``ratio_spread`` ({name: [min, max]}), ``repeats``, load and RSS."""
    ratios = ratios or {}
    return {
        "repeats": len(next(iter(t.times.values()))) if t.times else 0,
        "median_s": {n: _r(t.median(n)) for n in t.times},
        "spread": {n: [_r(v) for v in t.spread(n)] for n in t.times},
        "ratios": {k: _r(t.ratio(a, b), 4) for k, (a, b) in ratios.items()},
        "ratio_spread": {k: [_r(min(t.pair_ratios(a, b)), 4), _r(max(t.pair_ratios(a, b)), 4)]
                         for k, (a, b) in ratios.items()},
        "loadavg_before": list(t.load_before), "loadavg_after": list(t.load_after),
        "cpu_count": os.cpu_count(), "threads": t.threads, "peak_rss_mb": peak_rss_mb(),
    }


def add_args(parser, repeats: int = 5, warmup: int = 1, threads: int = 1) -> None:
    """The common flags: ``--repeats``, ``--warmup``, ``--threads``."""
    parser.add_argument("--repeats", type=int, default=repeats, help=f"timed interleaved rounds (default {repeats})")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed warm-up rounds (default {warmup})")
    parser.add_argument("--threads", type=int, default=threads,
                        help=f"torch threads (default {threads}: see benchmarks/timing.py on shared machines)")


def setup(args) -> None:
    """Apply ``--threads`` (before any model work)."""
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))


def say(msg: str) -> None:
    """Progress to stderr, so stdout's last line stays the JSON."""
    print(msg, file=sys.stderr, flush=True)
