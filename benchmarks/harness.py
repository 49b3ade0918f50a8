"""The benchmark harness: pytest-benchmark with GPU-aware timing.

Every benchmark times one callable on the real model shapes (on a GPU) or on shrunken ones (the CPU
smoke run in CI: ``pytest benchmarks --benchmark-disable`` runs each once). Each timed round runs the
callable back to back enough times to last about 2 ms and synchronises CUDA once at its end; warm-up calls
run first, and pytest-benchmark reports the median time per call. Achieved
bandwidth or throughput goes to ``extra_info`` and is printed in the JSON (``--benchmark-json``).
"""

import math
import os
import time

import torch

import t2ifast

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
# Without a GPU the benchmarks only prove they run: shapes are shrunk by this factor where they allow it.
SMOKE = not ON_GPU or os.environ.get("T2IFAST_BENCH_SMOKE") == "1"


class _SyncEvery:
    """fn, with a CUDA synchronize after every `every`-th call: a round of `every` back-to-back calls then costs
    what the GPU needs (launches overlap the work) plus one synchronize, not one per call. A synchronize takes
    hundreds of microseconds on the lent VMs, more than many of the ops timed here."""

    def __init__(self, fn, every):
        self.fn, self.every, self.calls = fn, every, 0

    def __call__(self, *args):
        out = self.fn(*args)
        self.calls += 1
        if ON_GPU and self.calls % self.every == 0:
            torch.cuda.synchronize()
        return out


def _iterations_per_round(fn, args, round_seconds=2e-3, most=100):
    """Calls per timed round so that a round lasts about round_seconds (one call when a call is longer)."""
    if not ON_GPU:
        return 1
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(3):
        fn(*args)
    torch.cuda.synchronize()
    per_call = (time.perf_counter() - start) / 3
    return max(1, min(most, math.ceil(round_seconds / per_call)))


def with_backend(name, fn):
    """fn run with t2ifast forced to backend `name` ("reference" for the eager reference)."""

    def call(*args):
        with t2ifast.backend(name):
            return fn(*args)

    return call


def compiled_reference(fn):
    """torch.compile of fn on the reference path: the baseline a fused kernel must also beat."""
    return torch.compile(with_backend("reference", fn))


def measure(benchmark, fn, *args, bytes_moved=None, flops=None, rounds=50, warmup=5):
    """Time fn(*args); record median-based GB/s and TFLOP/s when the work is given."""
    for _ in range(warmup if not benchmark.disabled else 0):
        fn(*args)
    iterations = 1 if benchmark.disabled else _iterations_per_round(fn, args)
    timed = _SyncEvery(fn, iterations)
    result = benchmark.pedantic(timed, args=args, rounds=1 if benchmark.disabled else rounds, iterations=iterations)
    if not benchmark.disabled:
        median = benchmark.stats.stats.median
        if bytes_moved is not None:
            benchmark.extra_info["GB/s"] = bytes_moved / median / 1e9
        if flops is not None:
            benchmark.extra_info["TFLOP/s"] = flops / median / 1e12
    benchmark.extra_info["device"] = torch.cuda.get_device_name() if ON_GPU else "cpu"
    return result


def saved_for_backward_bytes(fn, *args, exclude=()):
    """Bytes of the distinct storages autograd saves for backward while fn(*args) runs, leaving out those of
    `exclude` (the inputs and parameters, which exist whatever the layer keeps). Counts what a layer adds to
    memory between forward and backward, on any device; an output the layer saves is counted (a following
    layer may save it too: compare whole models to see that)."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn(*args)
    return sum(saved.values())


def available_backends(op, device_type=DEVICE, *, has_triton_kernel=True):
    """The fused backends that can run `op` here (the reference is benchmarked separately)."""
    from t2ifast import _backend

    return [
        name
        for name in ("native", "triton")
        if _backend._why_unavailable(name, op, device_type, has_triton_kernel) is None
    ]
