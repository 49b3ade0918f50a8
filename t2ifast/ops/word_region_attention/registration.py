"""Autograd and fake (shape-only) functions of the native and Triton word-region attention ops.

Forward returns (context, attn, lse); lse is the saved softmax statistic from which backward recomputes
the attention, so the [B, T, N] attention is kept only when the caller asked for it."""

import torch

from t2ifast import _backend, _extension


def _fake_forward(regions, words, pad_mask, return_attn):
    B, C, N = regions.shape
    T = words.shape[2]
    stats = torch.float64 if regions.dtype == torch.float64 else torch.float32
    return (
        regions.new_empty(B, C, N),
        regions.new_empty(B if return_attn else 0, T, N),
        regions.new_empty(B, N, dtype=stats),
    )


def _fake_backward(grad_context, grad_attn, regions, words, pad_mask, lse):
    return torch.empty_like(regions), torch.empty_like(words)


def _setup_context(ctx, inputs, output):
    regions, words, pad_mask, return_attn = inputs
    _, _, lse = output
    ctx.save_for_backward(regions, words, pad_mask, lse)
    ctx.return_attn = return_attn
    ctx.mark_non_differentiable(lse)


def _autograd(backward_op):
    def backward(ctx, grad_context, grad_attn, _grad_lse):
        regions, words, pad_mask, lse = ctx.saved_tensors
        grad_regions, grad_words = backward_op(
            grad_context, grad_attn if ctx.return_attn else None, regions, words, pad_mask, lse
        )
        return grad_regions, grad_words, None, None

    return backward


OPS = []
if "word_region_attention" in _extension.NATIVE_KERNELS:
    OPS.append(("t2ifast::word_region_attention", "t2ifast::word_region_attention_backward"))
if _backend.TRITON_AVAILABLE:
    from . import triton_kernel  # noqa: F401 - defines the t2ifast::word_region_attention*_triton ops

    OPS.append(("t2ifast::word_region_attention_triton", "t2ifast::word_region_attention_backward_triton"))

for _forward, _backward in OPS:
    # Explicit fakes for the Triton ops too: triton_op's traced ones would run the kernels on fake
    # tensors under TRITON_INTERPRET=1.
    torch.library.register_fake(_forward)(_fake_forward)
    torch.library.register_fake(_backward)(_fake_backward)
    _namespace, _name = _backward.split("::")
    torch.library.register_autograd(
        _forward, _autograd(getattr(torch.ops.t2ifast, _name)), setup_context=_setup_context
    )
