"""Triton kernel of the matching-aware loss, entered through ``torch.library.triton_op`` so that
``torch.compile`` sees inside it. Like the CUDA kernel: one program walks the three pair groups,
reading each logit once and writing its gradient, so backward only scales what is saved."""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .reference import negative_weight

BLOCK = 1024


@triton.jit
def _group_term(s_ptr, grad_ptr, n, target, scale, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Sum over one group of BCE(logit, target) * scale; writes (sigmoid(x) - target) * scale."""
    acc = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, n, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < n
        x = tl.load(s_ptr + offsets, mask=mask, other=0.0).to(ACC)
        e = tl.exp(-tl.abs(x))  # in (0, 1]: neither softplus nor sigmoid overflows
        softplus = tl.maximum(x, 0.0) + tl.log(1.0 + e)
        # .to(ACC): torch.compile passes the Python float `target` as an fp64 argument, which would promote the sum
        acc += tl.where(mask, softplus - target * x, 0.0).to(ACC)
        sigmoid = tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        tl.store(grad_ptr + offsets, ((sigmoid - target) * scale).to(grad_ptr.dtype.element_ty), mask=mask)
    return tl.sum(acc, axis=0) * scale


@triton.jit
def _matching_aware_loss_kernel(
    real_ptr,
    wrong_ptr,
    fake_ptr,
    grad_real_ptr,
    grad_wrong_ptr,
    grad_fake_ptr,
    values_ptr,
    n_real,
    n_wrong,
    n_fake,
    scale_real,
    scale_wrong,
    scale_fake,
    real_target,
    negative_weight,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    real = _group_term(real_ptr, grad_real_ptr, n_real, real_target, scale_real, BLOCK, ACC)
    wrong = _group_term(wrong_ptr, grad_wrong_ptr, n_wrong, 0.0, scale_wrong, BLOCK, ACC)
    fake = _group_term(fake_ptr, grad_fake_ptr, n_fake, 0.0, scale_fake, BLOCK, ACC)
    out = values_ptr.dtype.element_ty
    tl.store(values_ptr + 0, (real + negative_weight * (wrong + fake)).to(out))
    tl.store(values_ptr + 1, real.to(out))
    tl.store(values_ptr + 2, wrong.to(out))
    tl.store(values_ptr + 3, fake.to(out))


@triton_op("t2ifast::matching_aware_loss_triton", mutates_args=())
def matching_aware_loss_triton(
    s_real: torch.Tensor, s_wrong: torch.Tensor, s_fake: torch.Tensor, real_target: float, average: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as the native ``t2ifast::matching_aware_loss``."""
    groups = [s.contiguous() for s in (s_real, s_wrong, s_fake)]
    grads = [torch.empty_like(s) for s in groups]
    values = s_real.new_empty(4)
    scales = [1.0 / s.numel() if average and s.numel() > 0 else 1.0 for s in groups]
    wrap_triton(_matching_aware_loss_kernel)[(1,)](
        *groups,
        *grads,
        values,
        *(s.numel() for s in groups),
        *scales,
        real_target,
        negative_weight(s_wrong, s_fake),
        BLOCK=BLOCK,
        ACC=tl.float64 if s_real.dtype == torch.float64 else tl.float32,
    )
    return values, grads[0].view_as(s_real), grads[1].view_as(s_wrong), grads[2].view_as(s_fake)
