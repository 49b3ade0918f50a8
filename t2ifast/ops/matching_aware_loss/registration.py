"""Autograd and fake (shape-only) functions of the native and Triton matching-aware loss ops.

Both ops return (values, grad_real, grad_wrong, grad_fake): the kernel already computed the
gradient of each term, so backward scales it by how the loss and the terms were used."""

import torch

from t2ifast import _backend, _extension

from .reference import negative_weight


def _fake(s_real, s_wrong, s_fake, real_target, average):
    return s_real.new_empty(4), torch.empty_like(s_real), torch.empty_like(s_wrong), torch.empty_like(s_fake)


def _setup_context(ctx, inputs, output):
    _, s_wrong, s_fake, _, _ = inputs
    _, grad_real, grad_wrong, grad_fake = output
    ctx.save_for_backward(grad_real, grad_wrong, grad_fake)
    ctx.negative_weight = negative_weight(s_wrong, s_fake)
    ctx.mark_non_differentiable(grad_real, grad_wrong, grad_fake)


def _backward(ctx, grad_values, _grad_real, _grad_wrong, _grad_fake):
    # values = [loss, L_real, L_wrong, L_fake] with loss = L_real + w (L_wrong + L_fake).
    grad_real, grad_wrong, grad_fake = ctx.saved_tensors
    w = ctx.negative_weight
    return (
        (grad_values[0] + grad_values[1]) * grad_real,
        (grad_values[0] * w + grad_values[2]) * grad_wrong,
        (grad_values[0] * w + grad_values[3]) * grad_fake,
        None,
        None,
    )


OPS = []
if "matching_aware_loss" in _extension.NATIVE_KERNELS:
    OPS.append("t2ifast::matching_aware_loss")
if _backend.TRITON_AVAILABLE:
    from . import triton_kernel  # noqa: F401 - defines t2ifast::matching_aware_loss_triton

    OPS.append("t2ifast::matching_aware_loss_triton")

for _op in OPS:
    # An explicit fake for the Triton op too: triton_op's traced one would run the kernel on fake
    # tensors under TRITON_INTERPRET=1.
    torch.library.register_fake(_op)(_fake)
    torch.library.register_autograd(_op, _backward, setup_context=_setup_context)
