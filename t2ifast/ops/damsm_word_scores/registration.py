"""Autograd and fake (shape-only) functions of the fused DAMSM word-score ops.

Nothing but the inputs is saved: backward recomputes each pair's attention (T x N per pair, for every
image-caption pair, is what the loop formulation keeps alive for autograd)."""

import torch

from t2ifast import _backend, _extension


def _fake_forward(words, lengths, regions, gamma1, gamma2):
    return words.new_empty(regions.shape[0], words.shape[0])


def _fake_backward(grad_scores, words, lengths, regions, gamma1, gamma2):
    return torch.empty_like(words), torch.empty_like(regions)


def _setup_context(ctx, inputs, output):
    words, lengths, regions, gamma1, gamma2 = inputs
    ctx.save_for_backward(words, lengths, regions)
    ctx.gammas = (gamma1, gamma2)


def _autograd(backward_op):
    def backward(ctx, grad_scores):
        words, lengths, regions = ctx.saved_tensors
        grad_words, grad_regions = backward_op(grad_scores, words, lengths, regions, *ctx.gammas)
        return grad_words, None, grad_regions, None, None

    return backward


OPS = []
if "damsm_word_scores" in _extension.NATIVE_KERNELS:
    OPS.append(("t2ifast::damsm_word_scores", "damsm_word_scores_backward"))
if _backend.TRITON_AVAILABLE:
    from . import triton_kernel  # noqa: F401 - defines the t2ifast::damsm_word_scores*_triton ops

    OPS.append(("t2ifast::damsm_word_scores_triton", "damsm_word_scores_backward_triton"))

for _forward, _backward in OPS:
    # Explicit fakes for the Triton ops too: triton_op's traced ones would run the kernels on fake
    # tensors under TRITON_INTERPRET=1.
    torch.library.register_fake(_forward)(_fake_forward)
    torch.library.register_fake(f"t2ifast::{_backward}")(_fake_backward)
    torch.library.register_autograd(
        _forward, _autograd(getattr(torch.ops.t2ifast, _backward)), setup_context=_setup_context
    )
