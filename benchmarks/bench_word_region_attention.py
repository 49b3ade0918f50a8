"""word_region_attention forward and forward+backward at AttnGAN's generator shapes.

Each fused backend against the reference eager, torch.compile(reference), and PyTorch's
scaled_dot_product_attention (boolean mask, scale=1.0: it cannot return the attention map, and gives NaN
where every word is padding, so the inputs here always keep the first word). GB/s counts the least
traffic any implementation needs (read regions and words, write context; backward also reads the
context gradient and writes both input gradients); ``fraction_of_copy_bandwidth`` divides it by the
bandwidth of a device-to-device copy measured in the same process.
"""

import functools
import itertools

import pytest
import torch
import torch.nn.functional as F
from harness import DEVICE, ON_GPU, SMOKE, available_backends, compiled_reference, measure, with_backend

from t2ifast.ops import word_region_attention

OP = "word_region_attention"
if SMOKE:
    SHAPES = [(2, 8, 64, 5)]
else:  # (B, C, N, T): AttnGAN CUB/COCO stages 64x64 and 128x128, ngf 32 and 64
    SHAPES = list(itertools.product([20, 64], [32, 64], [64 * 64, 128 * 128], [18, 30]))


def _inputs(B, C, N, T):
    regions = torch.randn(B, C, N, device=DEVICE, requires_grad=True)
    words = torch.randn(B, C, T, device=DEVICE, requires_grad=True)
    lengths = torch.randint(max(1, T // 2), T + 1, (B,), device=DEVICE)
    pad_mask = torch.arange(T, device=DEVICE)[None, :] >= lengths[:, None]
    return regions, words, pad_mask


def _t2ifast_forward(regions, words, pad_mask):
    return word_region_attention(regions, words, pad_mask)[0]


def _sdpa_forward(regions, words, pad_mask):
    query = regions.transpose(1, 2).unsqueeze(1)  # [B, 1, N, C]
    keys = words.transpose(1, 2).unsqueeze(1)  # [B, 1, T, C]
    keep = ~pad_mask[:, None, None, :]  # [B, 1, 1, T]: True = attend
    return F.scaled_dot_product_attention(query, keys, keys, attn_mask=keep, scale=1.0).squeeze(1).transpose(1, 2)


def _with_backward(forward):
    def step(regions, words, pad_mask, grad_context):
        context = forward(regions, words, pad_mask)
        return torch.autograd.grad(context, (regions, words), grad_context)

    return step


FORWARDS = {
    **{name: with_backend(name, _t2ifast_forward) for name in available_backends(OP)},
    "reference": with_backend("reference", _t2ifast_forward),
    "compiled_reference": compiled_reference(_t2ifast_forward),
    "sdpa": _sdpa_forward,
}
FORWARD_BACKWARDS = {
    **{name: with_backend(name, _with_backward(_t2ifast_forward)) for name in available_backends(OP)},
    "reference": with_backend("reference", _with_backward(_t2ifast_forward)),
    "compiled_reference": compiled_reference(_with_backward(_t2ifast_forward)),
    "sdpa": _with_backward(_sdpa_forward),
}


@functools.cache
def _copy_bandwidth():
    """Bytes per second of a 1 GiB device-to-device copy (read + write), the achievable memory bandwidth."""
    x = torch.empty(1 << 28, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        y.copy_(x)
    end.record()
    torch.cuda.synchronize()
    return 10 * 2 * x.numel() * x.element_size() / (start.elapsed_time(end) / 1e3)


def _record_fraction(benchmark, bytes_moved):
    if ON_GPU and not benchmark.disabled:
        benchmark.extra_info["fraction_of_copy_bandwidth"] = (
            bytes_moved / benchmark.stats.stats.median / _copy_bandwidth()
        )


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-C{}-N{}-T{}".format(*s))
@pytest.mark.parametrize("implementation", list(FORWARDS))
def test_word_region_attention_fwd(benchmark, implementation, shape):
    B, C, N, T = shape
    benchmark.group = f"word_region_attention fwd B={B} C={C} N={N} T={T}"
    regions, words, pad_mask = _inputs(*shape)
    bytes_moved = (2 * B * C * N + B * C * T) * regions.element_size()
    with torch.no_grad():
        measure(benchmark, FORWARDS[implementation], regions, words, pad_mask, bytes_moved=bytes_moved)
    _record_fraction(benchmark, bytes_moved)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-C{}-N{}-T{}".format(*s))
@pytest.mark.parametrize("implementation", list(FORWARD_BACKWARDS))
def test_word_region_attention_fwd_bwd(benchmark, implementation, shape):
    B, C, N, T = shape
    benchmark.group = f"word_region_attention fwd+bwd B={B} C={C} N={N} T={T}"
    regions, words, pad_mask = _inputs(*shape)
    grad_context = torch.randn(B, C, N, device=DEVICE)
    # forward: read regions, words, write context; backward: read regions, words, grad_context,
    # write grad_regions, grad_words
    bytes_moved = (5 * B * C * N + 3 * B * C * T) * regions.element_size()
    args = (regions, words, pad_mask, grad_context)
    measure(benchmark, FORWARD_BACKWARDS[implementation], *args, bytes_moved=bytes_moved)
    _record_fraction(benchmark, bytes_moved)
