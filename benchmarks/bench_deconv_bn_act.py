"""Transposed conv + BatchNorm + activation blocks: each fused backend vs the reference eager and compiled.

Shapes (on a GPU):
- every BatchNorm layer of the GAN-INT-CLS / DCGAN 64x64 generator at batch 64, ngf 64 and 128:
  ConvTranspose 4x4 (100 + 128) -> 8ngf at 4x4 (stride 1), then 8ngf -> 4ngf (8x8), 4ngf -> 2ngf (16x16),
  2ngf -> ngf (32x32) (stride 2), each followed by BatchNorm2d + ReLU;
- AttnGAN's next-stage up-blocks (ngf 32: 64 -> 32 channels, nearest x2 -> 3x3 conv -> BN -> GLU) from 64x64
  to 128x128 and from 128x128 to 256x256, at AttnGAN's CUB batch size 20;
- the whole DCGAN generator (t2ifast.fuse of the nn.Sequential) at batch 64.
Modes: forward in training, forward+backward in training, forward in eval (BatchNorm folded).
For forward+backward, extra_info holds what the forward saves for backward beyond the inputs and parameters
(`saved_MB`, any device: the storages autograd packs; the reference's ReLU saves its output, the fused block
recomputes the mask from the BatchNorm input) and, on a GPU, the memory allocated after the forward, output
included (`kept_MB`), and the peak of one forward+backward (`peak_MB`).
"""

import pytest
import torch
from harness import (
    DEVICE,
    ON_GPU,
    SMOKE,
    available_backends,
    compiled_reference,
    measure,
    saved_for_backward_bytes,
    with_backend,
)
from torch import nn

import t2ifast
from t2ifast.nn import DeconvBNAct, UpBlock

BATCH = 2 if SMOKE else 64
UP_BATCH = 2 if SMOKE else 20
NGFS = [8] if SMOKE else [64, 128]
Z_DIM = 12 if SMOKE else 100 + 128  # noise + projected text embedding
UP_SIZES = [8] if SMOKE else [64, 128]  # input side of AttnGAN's next-stage up-blocks
UP_CHANNELS = (8, 4) if SMOKE else (64, 32)


def dcgan_layers(ngf):
    """(name, C_in, C_out, stride, padding, input side) of the DCGAN generator's BatchNorm layers."""
    return [
        ("4x4", Z_DIM, 8 * ngf, 1, 0, 1),
        ("8x8", 8 * ngf, 4 * ngf, 2, 1, 4),
        ("16x16", 4 * ngf, 2 * ngf, 2, 1, 8),
        ("32x32", 2 * ngf, ngf, 2, 1, 16),
    ]


def dcgan_generator(ngf):
    layers = []
    for _, c_in, c_out, stride, padding, _ in dcgan_layers(ngf):
        layers += [
            nn.ConvTranspose2d(c_in, c_out, 4, stride, padding, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(True),
        ]
    layers += [nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers).to(DEVICE)


def _forward(module, x):
    return module(x)


def _forward_backward(module, x, grad):
    out = module(x)
    return torch.autograd.grad(out, [x, *module.parameters()], grad)


IMPLEMENTATIONS = [*available_backends("bn_act_train"), "reference", "compiled_reference"]
MODES = ["train_fwd", "train_fwd_bwd", "eval_fwd"]


def _timed(implementation, fn):
    if implementation == "compiled_reference":
        torch._dynamo.reset()  # a fresh cache per benchmark: never the recompile limit's eager fallback
        return compiled_reference(fn)
    return with_backend(implementation, fn)


def _record_memory(benchmark, implementation, module, x, grad):
    """What the forward saves for backward, and on a GPU the memory kept from forward to backward (output
    included) and the peak of one forward+backward."""
    if implementation == "compiled_reference":  # compiled: the graph decides what it saves
        return
    backend = "reference" if implementation == "reference" else implementation
    saved = saved_for_backward_bytes(
        with_backend(backend, module), x, exclude=[x, *module.parameters(), *module.buffers()]
    )
    benchmark.extra_info["saved_MB"] = saved / 2**20
    if not ON_GPU:
        return
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with t2ifast.backend(backend):
        out = module(x)
        kept = torch.cuda.memory_allocated() - base
        torch.autograd.grad(out, [x, *module.parameters()], grad)
    torch.cuda.synchronize()
    benchmark.extra_info["kept_MB"] = kept / 2**20
    benchmark.extra_info["peak_MB"] = (torch.cuda.max_memory_allocated() - base) / 2**20


def _run(benchmark, implementation, mode, module, x):
    module.train(mode != "eval_fwd")
    if mode == "train_fwd_bwd":
        x.requires_grad_(True)
        grad = torch.randn_like(_forward(module, x.detach()))
        _record_memory(benchmark, implementation, module, x, grad)
        measure(benchmark, _timed(implementation, _forward_backward), module, x, grad)
    else:
        with torch.no_grad():
            measure(benchmark, _timed(implementation, _forward), module, x)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("ngf", NGFS)
@pytest.mark.parametrize("layer", [1] if SMOKE else range(4), ids=lambda i: dcgan_layers(8)[i][0])
def test_dcgan_layer(benchmark, implementation, mode, ngf, layer):
    name, c_in, c_out, stride, padding, side = dcgan_layers(ngf)[layer]
    benchmark.group = f"DCGAN layer {name} ngf={ngf} B={BATCH} {mode}"
    module = DeconvBNAct(c_in, c_out, 4, stride, padding, device=DEVICE)
    _run(benchmark, implementation, mode, module, torch.randn(BATCH, c_in, side, side, device=DEVICE))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("side", UP_SIZES)
def test_attngan_up_block(benchmark, implementation, mode, side):
    c_in, c_out = UP_CHANNELS
    benchmark.group = f"AttnGAN up-block {c_in}->{c_out} {side}->{2 * side} B={UP_BATCH} {mode}"
    module = UpBlock(c_in, c_out, device=DEVICE)
    _run(benchmark, implementation, mode, module, torch.randn(UP_BATCH, c_in, side, side, device=DEVICE))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("ngf", NGFS)
def test_dcgan_generator(benchmark, implementation, mode, ngf):
    benchmark.group = f"DCGAN generator ngf={ngf} B={BATCH} {mode}"
    generator = dcgan_generator(ngf)
    module = generator if implementation == "compiled_reference" else t2ifast.fuse(generator)[0]
    _run(benchmark, implementation, mode, module, torch.randn(BATCH, Z_DIM, 1, 1, device=DEVICE))
