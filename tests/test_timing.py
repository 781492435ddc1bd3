"""benchmarks/timing.py with fake clocks: interleaving order, medians, pairwise ratios (no real timing)."""

from __future__ import annotations

import statistics
import sys

import pytest

from benchmarks.timing import Way, interleave, report


class FakeClock:
    """A clock that each way's call advances by a scripted amount."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def advance(self, dt):
        self.now += dt


def test_interleaves_warmup_then_rounds_in_order():
    clock, calls = FakeClock(), []
    ways = [Way(n, lambda k, n=n: calls.append((k, n))) for n in "ABC"]
    t = interleave(ways, repeats=5, warmup=2, clock=clock)
    want = [(k, n) for k in (-2, -1, 0, 1, 2, 3, 4) for n in "ABC"]
    assert calls == want
    assert t.order == want
    assert all(len(v) == 5 for v in t.times.values())  # warm-up rounds are not timed


def test_medians_spread_and_scale():
    clock = FakeClock()
    a_times = iter([100.0, 1.0, 5.0, 3.0, 2.0, 4.0])  # the first (warm-up) is dropped
    ways = [Way("a", lambda: clock.advance(next(a_times))), Way("loop", lambda: clock.advance(2.0), scale=10)]
    t = interleave(ways, repeats=5, warmup=1, clock=clock)
    assert t.times["a"] == [1.0, 5.0, 3.0, 2.0, 4.0]
    assert t.median("a") == 3.0 and t.spread("a") == (1.0, 5.0)
    assert t.times["loop"] == [20.0] * 5  # scaled: a slice of the work, times the factor


def test_ratios_are_pair_by_pair_not_of_medians():
    clock = FakeClock()
    # Drift: round k is k times slower for both ways; b always takes twice a's time.
    a = iter([1.0, 1.0, 10.0, 2.0, 3.0, 4.0])
    b = iter([2.0, 2.0, 20.0, 4.0, 6.0, 8.0])
    t = interleave([Way("a", lambda: clock.advance(next(a))), Way("b", lambda: clock.advance(next(b)))],
                   repeats=5, warmup=1, clock=clock)
    assert t.pair_ratios("b", "a") == [2.0] * 5
    assert t.ratio("b", "a") == 2.0
    # the median of per-round ratios differs from the ratio of medians in general
    c = iter([0.0, 1.0, 1.0, 1.0, 9.0, 9.0])
    d = iter([0.0, 1.0, 2.0, 3.0, 3.0, 9.0])
    t = interleave([Way("c", lambda: clock.advance(next(c))), Way("d", lambda: clock.advance(next(d)))],
                   repeats=5, warmup=1, clock=clock)
    per_pair = [1.0, 0.5, 1 / 3, 3.0, 1.0]
    assert t.pair_ratios("c", "d") == pytest.approx(per_pair)
    assert t.ratio("c", "d") == pytest.approx(statistics.median(per_pair)) == pytest.approx(1.0)
    assert t.median("c") / t.median("d") == pytest.approx(1 / 3)


def test_report_holds_medians_spread_ratios_load_and_rss():
    clock = FakeClock()
    a, b = iter([1, 1, 2, 3, 4, 5]), iter([2, 2, 4, 6, 8, 10])
    t = interleave([Way("a", lambda: clock.advance(next(a))), Way("b", lambda: clock.advance(next(b)))],
                   repeats=5, clock=clock)
    r = report(t, {"b_over_a": ("b", "a")})
    assert r["repeats"] == 5
    assert r["median_s"] == {"a": 3.0, "b": 6.0}
    assert r["spread"] == {"a": [1.0, 5.0], "b": [2.0, 10.0]}
    assert r["ratios"] == {"b_over_a": 2.0} and r["ratio_spread"] == {"b_over_a": [2.0, 2.0]}
    if sys.platform != "win32":
        assert len(r["loadavg_before"]) == 3 and len(r["loadavg_after"]) == 3
    assert r["peak_rss_mb"] > 0


def test_fn_may_take_the_round_index_and_results_are_kept():
    t = interleave([Way("x", lambda k: k * 10)], repeats=3, warmup=1, clock=FakeClock())
    assert t.results["x"] == 20


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        interleave([Way("a", lambda: None)], repeats=0)
    with pytest.raises(ValueError):
        interleave([Way("a", lambda: None), Way("a", lambda: None)])


def test_round_slices_cover_distinct_items_with_equal_counts():
    from benchmarks.timing import round_slices

    pick, per_round = round_slices(list(range(62)), 5)
    assert per_round == 12
    rounds = [pick(k) for k in range(5)]
    assert all(len(r) == 12 for r in rounds)
    assert sorted(sum(rounds, [])) == list(range(60))  # every kept item once, none twice
    assert pick(-1) == [0]
    pick, per_round = round_slices([7, 8], 5)  # fewer items than rounds: one per round, repeating
    assert per_round == 1 and [pick(k) for k in range(5)] == [[7], [8], [7], [8], [7]]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_rss_sampler_sees_a_transient_allocation():
    import time

    from benchmarks.timing import RssSampler

    with RssSampler(interval=0.005) as s:
        block = bytearray(64 * 2**20)
        block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page
        deadline = time.monotonic() + 30  # wait for a sample, however loaded the machine
        while s.peak_mb - s.start_mb < 48 and time.monotonic() < deadline:
            time.sleep(0.005)
        del block
    assert s.peak_mb - s.start_mb >= 48
