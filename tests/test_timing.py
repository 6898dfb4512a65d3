"""The timer: warm-up outside the samples, adaptive stopping, the time box, the cache flush.
GPU tests compare against an independent CUDA-event loop."""

import time

import pytest
import torch

from harness.measure import timing
from harness.measure.timing import Timer, TimingSettings


def sleeper(ms: float):
    def fn():
        end = time.perf_counter() + ms / 1e3
        while time.perf_counter() < end:  # busy-wait: sleep() overshoots by scheduler ticks
            pass
    return fn


def test_host_timer_measures_a_known_duration():
    timer = Timer("cpu", TimingSettings(warmup_ms=5, min_samples=10, max_time_s=1.0, rel_ci=0.02, l2_flush=False), None)
    m = timer.measure(sleeper(2.0))
    assert m.summary.median == pytest.approx(2.0, rel=0.1)
    assert m.summary.q1 <= m.summary.median <= m.summary.q3
    assert m.summary.n >= 10


class FakeClock:
    """The timer's clock, advanced only by the work it times: a busy machine cannot disturb it."""

    def __init__(self):
        self.ns = 0

    def perf_counter_ns(self) -> int:
        return self.ns

    def perf_counter(self) -> float:
        return self.ns / 1e9

    def work(self, ms: float) -> None:
        self.ns += round(ms * 1e6)


def test_stops_as_soon_as_the_median_is_tight_enough(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing, "time", clock)
    timer = Timer("cpu", TimingSettings(warmup_ms=0, min_samples=10, max_time_s=5.0, rel_ci=0.2, l2_flush=False), None)
    m = timer.measure(lambda: clock.work(1.0))
    assert m.converged and m.summary.rel_ci <= 0.2
    assert clock.perf_counter() < 1.0  # far from the 5 s time box
    assert m.summary.n == 10  # a stable function needs no more than min_samples


def test_time_box_ends_a_noisy_measurement():
    import itertools

    durations = itertools.cycle([0.2, 3.0, 0.5, 2.0])  # ms: too spread for a 0.1% CI

    def noisy():
        sleeper(next(durations))()

    timer = Timer("cpu", TimingSettings(warmup_ms=0, min_samples=4, max_time_s=0.3, rel_ci=0.001, l2_flush=False), None)
    started = time.perf_counter()
    m = timer.measure(noisy)
    assert not m.converged
    assert time.perf_counter() - started < 0.3 + 0.2  # the box, plus at most one planned batch
    assert m.summary.n > 4


def test_min_samples_wins_over_the_time_box():
    timer = Timer("cpu", TimingSettings(warmup_ms=0, min_samples=5, max_time_s=0.001, l2_flush=False), None)
    assert timer.measure(sleeper(1.0)).summary.n >= 5


def test_warm_up_runs_before_sampling():
    calls = []
    timer = Timer("cpu", TimingSettings(warmup_ms=20, min_samples=3, max_time_s=0.01, rel_ci=0.5, l2_flush=False), None)
    m = timer.measure(lambda: calls.append(1))
    assert len(calls) >= m.summary.n + 2


def test_flush_buffer_is_twice_the_cache():
    timer = Timer("cpu", TimingSettings(l2_flush=True), 4 << 20)
    assert timer.flush_buffer.numel() == 8 << 20
    assert Timer("cpu", TimingSettings(l2_flush=False), 4 << 20).flush_buffer is None


@pytest.mark.gpu
@pytest.mark.parametrize("graph", [False, True])
def test_cuda_timer_agrees_with_an_independent_event_loop(graph):
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(a)
    fn = lambda: torch.matmul(a, b, out=out)  # noqa: E731
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    timer = Timer("cuda", TimingSettings(min_samples=20, max_time_s=2.0, cuda_graph=graph), l2)
    harness_ms = timer.measure(fn).summary.median
    flush = torch.empty(2 * l2, dtype=torch.int8, device="cuda")
    times = []
    for _ in range(50):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    independent = sorted(times)[len(times) // 2]
    assert harness_ms == pytest.approx(independent, rel=0.02)
