"""The benchmark harness: pytest-benchmark with GPU-aware timing.

Every benchmark times one callable on the real model shapes (on a GPU) or on shrunken ones (the CPU
smoke run in CI: ``pytest benchmarks --benchmark-disable`` runs each once). CUDA work is synchronised
inside the timed call, warm-up rounds run first, and pytest-benchmark reports the median. Achieved
bandwidth or throughput goes to ``extra_info`` and is printed in the JSON (``--benchmark-json``).
"""

import os

import torch

import t2ifast

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
# Without a GPU the benchmarks only prove they run: shapes are shrunk by this factor where they allow it.
SMOKE = not ON_GPU or os.environ.get("T2IFAST_BENCH_SMOKE") == "1"


def _synchronized(fn):
    if not ON_GPU:
        return fn

    def call(*args):
        out = fn(*args)
        torch.cuda.synchronize()
        return out

    return call


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
    timed = _synchronized(fn)
    for _ in range(warmup if not benchmark.disabled else 0):
        timed(*args)
    result = benchmark.pedantic(timed, args=args, rounds=1 if benchmark.disabled else rounds, iterations=1)
    if not benchmark.disabled:
        median = benchmark.stats.stats.median
        if bytes_moved is not None:
            benchmark.extra_info["GB/s"] = bytes_moved / median / 1e9
        if flops is not None:
            benchmark.extra_info["TFLOP/s"] = flops / median / 1e12
    benchmark.extra_info["device"] = torch.cuda.get_device_name() if ON_GPU else "cpu"
    return result


def available_backends(op, device_type=DEVICE, *, has_triton_kernel=True):
    """The fused backends that can run `op` here (the reference is benchmarked separately)."""
    from t2ifast import _backend

    return [
        name
        for name in ("native", "triton")
        if _backend._why_unavailable(name, op, device_type, has_triton_kernel) is None
    ]
