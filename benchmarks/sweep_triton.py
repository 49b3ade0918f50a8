"""Launch-configuration sweep of the Triton word-region attention, on a GPU (gpu_check.sh phase `sweep`).

The kernel's tile size, warps, backward programs per multiprocessor and tl.dot precision are module-level
settings of t2ifast.ops.word_region_attention.triton_kernel; this sets each combination in turn and times
forward and forward + backward at the issue's shapes, with the native kernel and the reference as yardsticks,
and the largest error of the context and the gradients against a float64 reference. Pick the defaults from
its table; only the defaults are tested.

    python benchmarks/sweep_triton.py [--smoke]
"""

import argparse
import time

import torch

import t2ifast
from t2ifast.ops import word_region_attention
from t2ifast.ops.word_region_attention import triton_kernel

SHAPES = [(64, 64, 128 * 128, 18), (64, 32, 128 * 128, 18)]  # (B, C, N, T): the target, and AttnGAN's C = ngf = 32
SMOKE_SHAPES = [(2, 16, 300, 5)]
DEFAULTS = {"TILE_ELEMENTS": 8192, "NUM_WARPS": 4, "PROGRAMS_PER_SM": 4, "precision": "tf32x3"}
# tile size x warps, then one setting changed at a time from the defaults
CONFIGURATIONS = [
    *({"TILE_ELEMENTS": tile, "NUM_WARPS": warps} for tile in (2048, 4096, 8192) for warps in (4, 8)),
    {"precision": "ieee"},
    {"precision": "tf32"},
    {"PROGRAMS_PER_SM": 2},
    {"PROGRAMS_PER_SM": 8},
]


def _inputs(B, C, N, T, device):
    generator = torch.Generator(device=device).manual_seed(0)
    regions = torch.randn(B, C, N, device=device, generator=generator)
    words = torch.randn(B, C, T, device=device, generator=generator) * C**-0.5
    lengths = torch.randint(1, T + 1, (B, 1), device=device, generator=generator)
    pad_mask = torch.arange(T, device=device)[None, :] >= lengths
    grad = torch.randn(B, C, N, device=device, generator=generator)
    return regions, words, pad_mask, grad


def _fwd_bwd(regions, words, pad_mask, grad):
    regions, words = regions.detach().requires_grad_(True), words.detach().requires_grad_(True)
    context, _ = word_region_attention(regions, words, pad_mask)
    return (context, *torch.autograd.grad(context, [regions, words], grad))


def _forward(regions, words, pad_mask, grad):
    with torch.no_grad():
        return word_region_attention(regions, words, pad_mask)


def _synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _milliseconds(fn, args, calls=20):
    """Per call, over back-to-back calls and one synchronisation."""
    for _ in range(3):
        fn(*args)
    _synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    _synchronize()
    return (time.perf_counter() - start) * 1e3 / calls


def _error(got, expected):
    return max((g.double() - e).abs().max().item() / e.abs().max().item() for g, e in zip(got, expected, strict=True))


def _row(label, backend, args, expected):
    with t2ifast.backend(backend):
        forward, both = _milliseconds(_forward, args), _milliseconds(_fwd_bwd, args)
        error = _error(_fwd_bwd(*args), expected)
    return f"| {label} | {forward * 1e3:.0f} | {both * 1e3:.0f} | {error:.1e} |"


def _configure(setting):
    """Sets the kernel module's launch settings and tl.dot precision (float32 inputs) for the next calls."""
    for name in ("TILE_ELEMENTS", "NUM_WARPS", "PROGRAMS_PER_SM"):
        setattr(triton_kernel, name, setting[name])
    precision = setting["precision"]
    triton_kernel._dot_precision = lambda dtype: precision if dtype == torch.float32 else "ieee"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one tiny shape (CPU: under TRITON_INTERPRET=1)")
    smoke = parser.parse_args().smoke
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shipped = {name: getattr(triton_kernel, name) for name in ("TILE_ELEMENTS", "NUM_WARPS", "PROGRAMS_PER_SM")}
    shipped_precision = triton_kernel._dot_precision
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}; shipped {shipped}")
    for B, C, N, T in SMOKE_SHAPES if smoke else SHAPES:
        args = _inputs(B, C, N, T, device)
        with t2ifast.backend("reference"):
            expected = _fwd_bwd(*(a.double() if a.is_floating_point() else a for a in args))
        print(f"\nB={B} C={C} N={N} T={T}, fp32; µs per call; error: largest |got - float64| / largest |float64|")
        print("| configuration | forward | forward + backward | error |\n|---|---|---|---|")
        print(_row("reference", "reference", args, expected))
        print(_row("native", "native", args, expected))
        for change in CONFIGURATIONS:
            setting = {**DEFAULTS, **change}
            _configure(setting)
            label = "triton " + " ".join(f"{k}={v}" for k, v in setting.items())
            try:
                print(_row(label, "triton", args, expected))
            except Exception as error:  # a configuration out of resources: say so, go on
                print(f"| {label} | failed: {type(error).__name__}: {str(error)[:80]} | | |")
    for name, value in shipped.items():
        setattr(triton_kernel, name, value)
    triton_kernel._dot_precision = shipped_precision


if __name__ == "__main__":
    main()
