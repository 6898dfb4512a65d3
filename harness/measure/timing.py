"""Timing a zero-argument closure: warm-up, cache flush, per-sample timing, adaptive stopping.

On a GPU each sample is bracketed by CUDA events on the current stream, after a write of a buffer
at least twice the L2 size (outside the events) so every sample starts from a cold cache, as a
kernel inside a real model would. Samples are queued in batches and read back after one
synchronize, so host round trips do not stretch the measurement. Collection stops once the
median's relative CI is under `rel_ci` (with at least `min_samples`), or when `max_time_s` is spent.
On a CPU the same loop uses the host clock. `cuda_graph` replays a captured graph of the closure,
which removes launch overhead for launch-bound kernels.

`case_timeout_s` is not the timer's: it bounds a whole case in `mfu run` (set-up, compile,
autotune, check and timing), after which the case is an `error` row and its worker is replaced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property

import torch

from harness.distributed.group import ALONE
from harness.measure import stats

MAX_SAMPLES = 100_000  # a memory bound on the sample list, far past any useful count
MAX_WARMUP_CALLS = 100_000  # of a microsecond kernel in a long warmup_ms


@dataclass(frozen=True)
class TimingSettings:
    warmup_ms: float = 25.0
    min_samples: int = 10
    max_time_s: float = 1.0
    rel_ci: float = 0.01
    l2_flush: bool = True
    cuda_graph: bool = False
    case_timeout_s: float = 600.0  # a whole case, compile and autotune included (harness/measure/supervisor.py)

    def __post_init__(self):
        for key in RULES:
            problem = check_setting(key, getattr(self, key))
            if problem:
                raise ValueError(f"{key} {problem}")


# What each numeric setting allows; booleans need no rule.
RULES = {
    "warmup_ms": ("must be at least 0", lambda v: v >= 0),
    "min_samples": ("must be at least 1", lambda v: v >= 1),
    "max_time_s": ("must be above 0", lambda v: v > 0),
    "rel_ci": ("must be between 0 and 1, exclusive", lambda v: 0 < v < 1),
    "case_timeout_s": ("must be above 0", lambda v: v > 0),
}


def check_setting(key: str, value) -> str | None:
    """None if the timing setting's value is allowed, else what is allowed and what was given."""
    if key not in RULES:
        return None
    text, ok = RULES[key]
    return None if ok(value) else f"{text} (got {value!r})"


@dataclass(frozen=True)
class Measurement:
    samples_ms: list[float]
    summary: stats.Summary
    converged: bool  # rel_ci reached before max_time_s


class Timer:
    """Times closures on one device. Holds the flush buffer, allocated once per run at first use,
    so a Timer that only carries the settings (the parent process of a run) never touches the device."""

    def __init__(self, device: str, settings: TimingSettings, cache_bytes: int | None):
        self.device, self.settings = device, settings
        self.cuda = device == "cuda"
        self.flush_bytes = 2 * (cache_bytes or (32 << 20))  # 2x the last-level cache; 64 MiB if unknown

    @cached_property
    def flush_buffer(self) -> torch.Tensor | None:
        if not self.settings.l2_flush:
            return None
        return torch.empty(self.flush_bytes, dtype=torch.int8, device=self.device)

    def measure(self, fn, ranks=None, align: bool = False) -> Measurement:
        """Time fn. In a distributed run `ranks` (harness/distributed/group.py) makes every rank
        warm up as often, sample in batches of the same size and stop together (a collective must be
        called equally often everywhere; a single-GPU case so runs on all GPUs at once, as in a real
        job); `align` puts a device-side barrier before each sample of a collective."""
        s = self.settings
        ranks = ranks or ALONE
        self._warm_up(fn, ranks)
        run = self._graph(fn) if (s.cuda_graph and self.cuda) else fn
        samples: list[float] = []
        deadline = time.perf_counter() + s.max_time_s
        batch = ranks.agree_min("the first batch", s.min_samples)
        while True:
            started = time.perf_counter()
            samples += self._batch(run, batch, ranks.align if align else None)
            per_sample_s = (time.perf_counter() - started) / batch  # flush and host overhead included
            summary = stats.summarize(samples)
            converged = len(samples) >= s.min_samples and summary.rel_ci <= s.rel_ci
            left = deadline - time.perf_counter()
            # Grow geometrically, but never plan a batch past the deadline.
            fits = max(1, int(left / max(per_sample_s, 1e-7)))
            batch = max(1, min(len(samples), fits, MAX_SAMPLES - len(samples)))
            out = left <= 0 or len(samples) >= MAX_SAMPLES
            # Stop when every rank has converged, or any is out of time; else the smallest next batch.
            votes = ranks.exchange("the stopping vote", [converged, out, batch])
            if all(v[0] for v in votes) or any(v[1] for v in votes):
                return Measurement(samples, summary, converged)
            batch = min(v[2] for v in votes)

    def _warm_up(self, fn, ranks) -> None:
        """Run fn for warmup_ms, and at least twice: two calls, then as many more as the slowest
        rank needs to fill warmup_ms at the rate of the second call."""
        start = time.perf_counter()
        for _ in range(2):
            call_started = time.perf_counter()
            fn()
            self._sync()
        per_call_ms = (time.perf_counter() - call_started) * 1e3
        left_ms = self.settings.warmup_ms - (time.perf_counter() - start) * 1e3
        more = int(max(0.0, left_ms) / max(per_call_ms, 1e-4))
        for _ in range(int(ranks.agree_max("the warm-up", min(more, MAX_WARMUP_CALLS)))):
            fn()
        self._sync()

    def _batch(self, fn, count: int, align=None) -> list[float]:
        if not self.cuda:
            return [self._host_sample(fn, align) for _ in range(count)]
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(count)]
        for start, end in events:
            self._flush()
            if align:
                align()
            start.record()
            fn()
            end.record()
        events[-1][1].synchronize()
        return [start.elapsed_time(end) for start, end in events]

    def _host_sample(self, fn, align=None) -> float:
        self._flush()
        if align:
            align()  # on gloo a blocking barrier: every rank starts the sample together
        start = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - start) / 1e6

    def _flush(self) -> None:
        if self.flush_buffer is not None:
            self.flush_buffer.zero_()

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _graph(self, fn):
        replay = capture_graph(fn, warmups=1)
        replay()
        torch.cuda.synchronize()
        return replay


def capture_graph(fn, warmups: int = 1) -> "GraphReplay":
    """fn captured once into a CUDA graph, after `warmups` calls on a side stream (capture needs one,
    and every allocation fn makes must already be cached); calling the result replays it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):  # compile, autotune, and cache every allocation before capture
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return GraphReplay(graph, fn)


class GraphReplay:
    """Replays a captured graph, and keeps what was captured alive for as long as it may be replayed.

    A CUDA graph reads and writes the raw addresses it was captured with and holds no reference to
    any tensor. Everything the captured kernels touch outside the graph's own pool belongs to the
    closure: a block's RoPE tables, an MoE loop's expert index tensors, our kernels' staging and
    routing buffers. Dropped, they go back to the caching allocator, and the next allocations (a
    reference check's, first of all) overwrite them while replays still read them. The first H200
    run fits this: the mixtral decode block passed its checked replay, then an index_select of the
    expert loop read an out-of-range id (a device-side assert)."""

    def __init__(self, graph, fn):
        self.graph, self.fn = graph, fn

    def __call__(self) -> None:
        self.graph.replay()
