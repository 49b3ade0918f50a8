"""Launch-setting sweep of the Triton kernels, on a GPU (gpu_check.sh phase `sweep`).

Each Triton kernel file keeps its launch settings (tile sizes, warps, programs per multiprocessor) as module
constants; this sets one combination at a time and times forward and forward + backward at the issues' shapes,
with the native kernel and the reference as yardsticks, and the largest error against a float64 reference.
Pick the shipped defaults from its tables; only the defaults are tested.

    python benchmarks/sweep_triton.py [--smoke] [--ops word_region_attention damsm_word_scores]

--smoke runs one tiny shape per op (on CPU under TRITON_INTERPRET=1), to check the script itself.
"""

import argparse
import time
from dataclasses import dataclass

import torch

import t2ifast
from t2ifast.ops import damsm_word_scores, word_region_attention
from t2ifast.ops.damsm_word_scores import triton_kernel as damsm_kernel
from t2ifast.ops.word_region_attention import triton_kernel as attention_kernel


def _attention_inputs(shape, device, generator):
    B, C, N, T = shape
    regions = torch.randn(B, C, N, device=device, generator=generator)
    words = torch.randn(B, C, T, device=device, generator=generator) * C**-0.5
    lengths = torch.randint(1, T + 1, (B, 1), device=device, generator=generator)
    pad_mask = torch.arange(T, device=device)[None, :] >= lengths
    return regions, words, pad_mask, torch.randn(B, C, N, device=device, generator=generator)


def _attention_forward(regions, words, pad_mask, grad):
    return word_region_attention(regions, words, pad_mask)[0]


def _damsm_inputs(shape, device, generator):
    B, M, D, T, N = shape
    words = torch.randn(B, D, T, device=device, generator=generator)
    lengths = torch.randint(1, T + 1, (B,), device=device, generator=generator)
    regions = torch.randn(M, D, N, device=device, generator=generator)
    return words, lengths, regions, torch.randn(M, B, device=device, generator=generator)


def _damsm_forward(words, lengths, regions, grad):
    return damsm_word_scores(words, lengths, regions)


@dataclass
class Sweep:
    module: object  # the Triton kernel file whose constants are set
    inputs: object  # (shape, device, generator) -> (*differentiable and other inputs, upstream gradient)
    forward: object  # (*inputs, grad) -> output
    differentiable: tuple  # positions of the inputs that get gradients
    shapes: list
    smoke_shape: tuple
    configurations: list  # each a change from the shipped settings


SWEEPS = {
    "word_region_attention": Sweep(
        module=attention_kernel,
        inputs=_attention_inputs,
        forward=_attention_forward,
        differentiable=(0, 1),
        shapes=[(64, 64, 128 * 128, 18), (64, 32, 128 * 128, 18)],  # (B, C, N, T): the target; AttnGAN's C = 32
        smoke_shape=(2, 16, 300, 5),
        configurations=[
            {},
            *({"TILE_ELEMENTS": tile, "NUM_WARPS": warps} for tile in (2048, 4096, 8192) for warps in (4, 8)),
            {"precision": "ieee"},
            {"precision": "tf32"},
            {"PROGRAMS_PER_SM": 2},
            {"PROGRAMS_PER_SM": 8},
        ],
    ),
    "damsm_word_scores": Sweep(
        module=damsm_kernel,
        inputs=_damsm_inputs,
        forward=_damsm_forward,
        differentiable=(0, 2),
        shapes=[(48, 48, 256, 18, 289)],  # (B, M, D, T, N)
        smoke_shape=(3, 2, 20, 4, 50),
        configurations=[
            {},
            {"BLOCK_N": 32},
            {"BLOCK_DK": 32},
            {"NUM_WARPS_PAIRS": 8},
            {"NUM_WARPS_SUMS": 4},
            {"NUM_WARPS_SUMS": 16},
            {"PROGRAMS_PER_SM": 2},
            {"PROGRAMS_PER_SM": 8},
        ],
    ),
}


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


def _forward_backward(sweep):
    def run(*args):
        args = [a.detach().requires_grad_(i in sweep.differentiable) for i, a in enumerate(args)]
        out = sweep.forward(*args)
        grads = torch.autograd.grad(out, [args[i] for i in sweep.differentiable], args[-1])
        return (out, *grads)

    return run


def _error(got, expected):
    return max((g.double() - e).abs().max().item() / e.abs().max().item() for g, e in zip(got, expected, strict=True))


def _row(label, backend, sweep, args, expected):
    with t2ifast.backend(backend), torch.no_grad():
        forward = _milliseconds(sweep.forward, args)
    with t2ifast.backend(backend):
        both = _milliseconds(_forward_backward(sweep), args)
        error = _error(_forward_backward(sweep)(*args), expected)
    return f"| {label} | {forward * 1e3:.0f} | {both * 1e3:.0f} | {error:.1e} |"


class _Settings:
    """Sets a kernel module's launch constants (and, for "precision", the float32 tl.dot precision) for a
    configuration; restores the shipped ones on exit."""

    def __init__(self, module, change):
        self.module, self.change = module, change

    def __enter__(self):
        self.saved = {name: getattr(self.module, name) for name in self.change if name != "precision"}
        self.saved_precision = getattr(self.module, "_dot_precision", None)
        for name, value in self.change.items():
            if name == "precision":
                self.module._dot_precision = lambda dtype, p=value: p if dtype == torch.float32 else "ieee"
            else:
                setattr(self.module, name, value)

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            setattr(self.module, name, value)
        if "precision" in self.change:
            self.module._dot_precision = self.saved_precision


def _sweep(name, sweep, shape, device):
    args = sweep.inputs(shape, device, torch.Generator(device=device).manual_seed(0))
    with t2ifast.backend("reference"):
        as_double = [a.double() if a.is_floating_point() else a for a in args]
        expected = _forward_backward(sweep)(*as_double)
    print(f"\n{name} {shape}, fp32; µs per call; error: largest |got - float64| / largest |float64|")
    print("| configuration | forward | forward + backward | error |\n|---|---|---|---|")
    for backend in ("reference", "native"):
        try:
            print(_row(backend, backend, sweep, args, expected))
        except t2ifast.BackendUnavailableError as error:
            print(f"| {backend} | unavailable: {error} | | |")
    for change in sweep.configurations:
        label = "triton " + (" ".join(f"{k}={v}" for k, v in change.items()) or "(shipped)")
        try:
            with _Settings(sweep.module, change):
                print(_row(label, "triton", sweep, args, expected))
        except Exception as error:  # a configuration out of resources: say so, go on
            print(f"| {label} | failed: {type(error).__name__}: {str(error)[:80]} | | |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one tiny shape per op (CPU: under TRITON_INTERPRET=1)")
    parser.add_argument("--ops", nargs="+", choices=list(SWEEPS), default=list(SWEEPS))
    options = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"{torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}")
    for name in options.ops:
        sweep = SWEEPS[name]
        for shape in [sweep.smoke_shape] if options.smoke else sweep.shapes:
            _sweep(name, sweep, shape, device)


if __name__ == "__main__":
    main()
