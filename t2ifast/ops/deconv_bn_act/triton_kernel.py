"""Triton kernels of the fused BatchNorm + activation ops, entered through ``torch.library.triton_op`` so
that ``torch.compile`` sees inside them. Same contracts and same passes as the native ops:

- training forward: per-channel partial statistics over slices of (N, H, W) (each tile's mean and M2
  computed exactly, then merged with Chan's formula: no E[y^2] - E[y]^2 cancellation), a merge of the
  slices that also updates the running statistics, then one elementwise pass writing act((y - mean) * scale + beta);
- backward: per-channel partial sums of dL/dz and dL/dz * (y - mean), with dL/dz recomputed from y and
  the saved statistics, a merge, then one elementwise pass writing grad_y.

y is seen as [N, C, L]; an output element (n, c, l) of GLU reads channels c and c + C/2.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

BLOCK = 1024
BLOCK_C = 64
TARGET_PROGRAMS = 1024  # programs per reduction launch: enough to fill a GPU when channels are few


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _stats_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _splits(count, channels):
    """How many slices each channel's `count` elements are cut into, and the slice length (a multiple of BLOCK)."""
    splits = max(1, min(triton.cdiv(count, 4 * BLOCK), triton.cdiv(TARGET_PROGRAMS, max(channels, 1))))
    chunk = triton.cdiv(triton.cdiv(count, splits), BLOCK) * BLOCK
    return triton.cdiv(count, chunk), chunk


@triton.jit
def _activate(z, slope, ACT: tl.constexpr):
    if ACT == 1:
        z = tl.maximum(z, 0.0)
    elif ACT == 2:
        z = tl.where(z > 0, z, z * slope)
    return z


@triton.jit
def _activation_grad(g, z, slope, ACT: tl.constexpr):
    if ACT == 1:
        g = tl.where(z > 0, g, 0.0)
    elif ACT == 2:
        g = tl.where(z > 0, g, g * slope)
    return g


@triton.jit
def _sigmoid(x):
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _stats_partial_kernel(y_ptr, part_ptr, C, L, M, chunk, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """part[c, s] = (count, mean, M2) of channel c over flat positions [s*chunk, (s+1)*chunk) of (N, L)."""
    c = tl.program_id(0)
    s = tl.program_id(1)
    splits = tl.num_programs(1)
    zero = tl.sum(tl.zeros([BLOCK], ACC), axis=0)
    count, mean, m2 = zero, zero, zero
    lo = s * chunk
    for start in range(lo, tl.minimum(lo + chunk, M), BLOCK):
        j = start + tl.arange(0, BLOCK)
        mask = j < M
        n = j // L
        x = tl.load(y_ptr + (n * C + c).to(tl.int64) * L + j % L, mask=mask, other=0.0).to(ACC)
        tile_count = tl.sum(mask.to(ACC), axis=0)
        tile_mean = tl.sum(x, axis=0) / tile_count
        d = tl.where(mask, x - tile_mean, 0.0)
        tile_m2 = tl.sum(d * d, axis=0)
        total = count + tile_count
        delta = tile_mean - mean
        mean += delta * (tile_count / total)
        m2 += tile_m2 + delta * delta * count * (tile_count / total)
        count = total
    base = (c * splits + s) * 3
    tl.store(part_ptr + base, count)
    tl.store(part_ptr + base + 1, mean)
    tl.store(part_ptr + base + 2, m2)


@triton.jit
def _stats_finalize_kernel(
    part_ptr,
    w_ptr,
    b_ptr,
    rm_ptr,
    rv_ptr,
    mean_ptr,
    invstd_ptr,
    scale_ptr,
    shift_ptr,
    C,
    splits,
    momentum,
    eps,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """Merges the slices of each channel, saves mean/invstd, forms scale/shift, updates the running stats."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    count = tl.zeros([BLOCK_C], ACC)
    mean = tl.zeros([BLOCK_C], ACC)
    m2 = tl.zeros([BLOCK_C], ACC)
    for s in range(0, splits):
        base = (c * splits + s) * 3
        other_count = tl.load(part_ptr + base, mask=cmask, other=1.0)
        other_mean = tl.load(part_ptr + base + 1, mask=cmask, other=0.0)
        other_m2 = tl.load(part_ptr + base + 2, mask=cmask, other=0.0)
        total = count + other_count
        delta = other_mean - mean
        mean += delta * (other_count / total)
        m2 += other_m2 + delta * delta * count * (other_count / total)
        count = total
    invstd = 1.0 / tl.sqrt(m2 / count + eps)
    gamma = tl.load(w_ptr + c, mask=cmask, other=1.0).to(ACC)
    beta = tl.load(b_ptr + c, mask=cmask, other=0.0).to(ACC)
    scale = gamma * invstd
    tl.store(mean_ptr + c, mean, mask=cmask)
    tl.store(invstd_ptr + c, invstd, mask=cmask)
    tl.store(scale_ptr + c, scale, mask=cmask)
    tl.store(shift_ptr + c, beta, mask=cmask)  # z = (y - mean) * scale + beta: exact for |mean| >> std
    rm = tl.load(rm_ptr + c, mask=cmask, other=0.0).to(ACC)
    rv = tl.load(rv_ptr + c, mask=cmask, other=0.0).to(ACC)
    rm = (1.0 - momentum) * rm + momentum * mean
    rv = (1.0 - momentum) * rv + momentum * (m2 / tl.maximum(count - 1.0, 1.0))  # count > 1: checked by callers
    tl.store(rm_ptr + c, rm.to(rm_ptr.dtype.element_ty), mask=cmask)
    tl.store(rv_ptr + c, rv.to(rv_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _affine_act_kernel(
    y_ptr,
    scale_ptr,
    shift_ptr,
    center_ptr,
    out_ptr,
    C,
    C_out,
    L,
    total,
    slope,
    ACT: tl.constexpr,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    """out[n, c, l] = act((y[n, c, l] - center[c]) * scale[c] + shift[c]); GLU: a * sigmoid(b) over (c, c + C_out)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    pos = i % L
    row = i // L
    c = row % C_out
    n = row // C_out
    a_offset = (n * C + c) * L + pos
    a = tl.load(y_ptr + a_offset, mask=mask, other=0.0).to(ACC)
    a = (a - tl.load(center_ptr + c, mask=mask, other=0.0)) * tl.load(scale_ptr + c, mask=mask, other=0.0)
    a += tl.load(shift_ptr + c, mask=mask, other=0.0)
    if ACT == 3:
        cb = c + C_out
        b = tl.load(y_ptr + a_offset + C_out * L, mask=mask, other=0.0).to(ACC)
        b = (b - tl.load(center_ptr + cb, mask=mask, other=0.0)) * tl.load(scale_ptr + cb, mask=mask, other=0.0)
        b += tl.load(shift_ptr + cb, mask=mask, other=0.0)
        out = a * _sigmoid(b)
    else:
        out = _activate(a, slope, ACT)
    tl.store(out_ptr + i, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_sums_kernel(
    g_ptr,
    y_ptr,
    scale_ptr,
    shift_ptr,
    center_ptr,
    part_ptr,
    C,
    C_out,
    L,
    M,
    chunk,
    slope,
    ACT: tl.constexpr,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    """part[c, s] = (sum dL/dz, sum dL/dz * (y - center)) over a slice; GLU programs do channels c and c + C_out."""
    c = tl.program_id(0)
    s = tl.program_id(1)
    splits = tl.num_programs(1)
    sa = tl.load(scale_ptr + c)
    ta = tl.load(shift_ptr + c)
    ma = tl.load(center_ptr + c)
    dz_a = tl.zeros([BLOCK], ACC)
    dzy_a = tl.zeros([BLOCK], ACC)
    dz_b = tl.zeros([BLOCK], ACC)
    dzy_b = tl.zeros([BLOCK], ACC)
    lo = s * chunk
    for start in range(lo, tl.minimum(lo + chunk, M), BLOCK):
        j = start + tl.arange(0, BLOCK)
        mask = j < M
        n = (j // L).to(tl.int64)
        g = tl.load(g_ptr + (n * C_out + c) * L + j % L, mask=mask, other=0.0).to(ACC)
        ya = tl.load(y_ptr + (n * C + c) * L + j % L, mask=mask, other=0.0).to(ACC)
        if ACT == 3:
            yb = tl.load(y_ptr + (n * C + c + C_out) * L + j % L, mask=mask, other=0.0).to(ACC)
            sb = tl.load(scale_ptr + c + C_out)
            tb = tl.load(shift_ptr + c + C_out)
            mb = tl.load(center_ptr + c + C_out)
            sig = _sigmoid((yb - mb) * sb + tb)
            ga = g * sig
            gb = g * ((ya - ma) * sa + ta) * sig * (1.0 - sig)
            dz_b += gb
            dzy_b += gb * (yb - mb)
        else:
            ga = _activation_grad(g, (ya - ma) * sa + ta, slope, ACT)
        dz_a += ga
        dzy_a += ga * (ya - ma)
    base = (c * splits + s) * 2
    tl.store(part_ptr + base, tl.sum(dz_a, axis=0))
    tl.store(part_ptr + base + 1, tl.sum(dzy_a, axis=0))
    if ACT == 3:
        base_b = ((c + C_out) * splits + s) * 2
        tl.store(part_ptr + base_b, tl.sum(dz_b, axis=0))
        tl.store(part_ptr + base_b + 1, tl.sum(dzy_b, axis=0))


@triton.jit
def _backward_elementwise_kernel(
    g_ptr,
    y_ptr,
    scale_ptr,
    shift_ptr,
    center_ptr,
    alpha_ptr,
    beta_ptr,
    grad_y_ptr,
    C,
    C_out,
    L,
    total,
    slope,
    ACT: tl.constexpr,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr,
):
    """grad_y = scale * dL/dz - alpha - beta * (y - center), per input channel; indexed by output element."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    pos = i % L
    row = i // L
    c = row % C_out
    n = row // C_out
    g = tl.load(g_ptr + i, mask=mask, other=0.0).to(ACC)
    a_offset = (n * C + c) * L + pos
    ya = tl.load(y_ptr + a_offset, mask=mask, other=0.0).to(ACC)
    sa = tl.load(scale_ptr + c, mask=mask, other=0.0)
    ya_centred = ya - tl.load(center_ptr + c, mask=mask, other=0.0)
    za = ya_centred * sa + tl.load(shift_ptr + c, mask=mask, other=0.0)
    correction_a = tl.load(alpha_ptr + c, mask=mask, other=0.0)
    correction_a += tl.load(beta_ptr + c, mask=mask, other=0.0) * ya_centred
    if ACT == 3:
        cb = c + C_out
        yb = tl.load(y_ptr + a_offset + C_out * L, mask=mask, other=0.0).to(ACC)
        sb = tl.load(scale_ptr + cb, mask=mask, other=0.0)
        yb_centred = yb - tl.load(center_ptr + cb, mask=mask, other=0.0)
        sig = _sigmoid(yb_centred * sb + tl.load(shift_ptr + cb, mask=mask, other=0.0))
        gb = g * za * sig * (1.0 - sig)
        correction_b = tl.load(alpha_ptr + cb, mask=mask, other=0.0)
        correction_b += tl.load(beta_ptr + cb, mask=mask, other=0.0) * yb_centred
        out_b = sb * gb - correction_b
        tl.store(grad_y_ptr + a_offset + C_out * L, out_b.to(grad_y_ptr.dtype.element_ty), mask=mask)
        ga = g * sig
    else:
        ga = _activation_grad(g, za, slope, ACT)
    tl.store(grad_y_ptr + a_offset, (sa * ga - correction_a).to(grad_y_ptr.dtype.element_ty), mask=mask)


def _act_code(act):
    """The ACT constexpr of the kernels (the Activation enum of csrc/bn_act/bn_act.h)."""
    return {"none": 0, "relu": 1, "leaky_relu": 2, "glu": 3}[act]


def _layout(y, act):
    """(N, C, L, C_out, output sizes) of y seen as [N, C, L]."""
    n, c = y.shape[0], y.shape[1]
    inner = y.numel() // (n * c) if n * c > 0 else 0
    c_out = c // 2 if act == "glu" else c
    return n, c, inner, c_out, (n, c_out, *y.shape[2:])


def _affine_act(y, scale, shift, center, act, negative_slope):
    """act((y - center) * scale + shift) with per-channel parameters in the accumulator dtype."""
    _, c, inner, c_out, out_shape = _layout(y, act)
    out = y.new_empty(out_shape)
    total = out.numel()
    if total > 0:
        wrap_triton(_affine_act_kernel)[(triton.cdiv(total, BLOCK),)](
            y,
            scale,
            shift,
            center,
            out,
            c,
            c_out,
            inner,
            total,
            negative_slope,
            ACT=_act_code(act),
            BLOCK=BLOCK,
            ACC=_acc(y.dtype),
        )
    return out


def _backward(grad_out, y, scale, shift, center, act, negative_slope):
    """Per-channel (sum dL/dz, sum dL/dz * (y - center)) and a function writing grad_y from coefficients."""
    n, c, inner, c_out, _ = _layout(y, act)
    count = n * inner
    splits, chunk = _splits(count, c_out)
    partial = torch.empty((c, splits, 2), dtype=scale.dtype, device=y.device)
    acc = _acc(y.dtype)
    wrap_triton(_backward_sums_kernel)[(c_out, splits)](
        grad_out,
        y,
        scale,
        shift,
        center,
        partial,
        c,
        c_out,
        inner,
        count,
        chunk,
        negative_slope,
        ACT=_act_code(act),
        BLOCK=BLOCK,
        ACC=acc,
    )
    sums = partial.sum(dim=1)

    def grad_y_from(alpha, beta):
        grad_y = torch.empty_like(y)
        total = grad_out.numel()
        if total > 0:
            wrap_triton(_backward_elementwise_kernel)[(triton.cdiv(total, BLOCK),)](
                grad_out,
                y,
                scale,
                shift,
                center,
                alpha,
                beta,
                grad_y,
                c,
                c_out,
                inner,
                total,
                negative_slope,
                ACT=_act_code(act),
                BLOCK=BLOCK,
                ACC=acc,
            )
        return grad_y

    return sums[:, 0].clone(), sums[:, 1].clone(), grad_y_from  # distinct tensors: op outputs may not alias


@triton_op("t2ifast::bn_act_train_triton", mutates_args=("running_mean", "running_var"))
def bn_act_train_triton(
    y: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    momentum: float,
    eps: float,
    act: str,
    negative_slope: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as the native ``t2ifast::bn_act_train``."""
    y = y.contiguous()
    n, c, inner, _, _ = _layout(y, act)
    count = n * inner
    stats = _stats_dtype(y.dtype)
    splits, chunk = _splits(count, c)
    partial = torch.empty((c, splits, 3), dtype=stats, device=y.device)
    acc = _acc(y.dtype)
    wrap_triton(_stats_partial_kernel)[(c, splits)](y, partial, c, inner, count, chunk, BLOCK=BLOCK, ACC=acc)
    mean, invstd, scale, shift = (torch.empty(c, dtype=stats, device=y.device) for _ in range(4))
    wrap_triton(_stats_finalize_kernel)[(triton.cdiv(c, BLOCK_C),)](
        partial,
        weight,
        bias,
        running_mean,
        running_var,
        mean,
        invstd,
        scale,
        shift,
        c,
        splits,
        momentum,
        eps,
        BLOCK_C=BLOCK_C,
        ACC=acc,
    )
    return _affine_act(y, scale, shift, mean, act, negative_slope), mean, invstd


@triton_op("t2ifast::bn_act_backward_triton", mutates_args=())
def bn_act_backward_triton(
    grad_out: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    act: str,
    negative_slope: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as the native ``t2ifast::bn_act_backward``."""
    y, grad_out = y.contiguous(), grad_out.contiguous()
    scale = weight.to(invstd.dtype) * invstd
    shift = bias.to(invstd.dtype)  # z = (y - mean) * scale + shift
    sum_dz, sum_dzy, grad_y_from = _backward(grad_out, y, scale, shift, mean, act, negative_slope)
    # grad_y = scale * (dz - mean(dz) - xhat * mean(dz * xhat)), xhat = (y - mean) * invstd
    inv_count = 1.0 / (y.numel() // y.shape[1])
    alpha = scale * sum_dz * inv_count
    beta = scale * invstd * invstd * sum_dzy * inv_count
    grad_y = grad_y_from(alpha, beta)
    return grad_y, (sum_dzy * invstd).to(weight.dtype), sum_dz.to(bias.dtype)


@triton_op("t2ifast::affine_act_triton", mutates_args=())
def affine_act_triton(
    y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, act: str, negative_slope: float
) -> torch.Tensor:
    """Same contract as the native ``t2ifast::affine_act``."""
    stats = _stats_dtype(y.dtype)
    scale = scale.to(stats)
    return _affine_act(y.contiguous(), scale, shift.to(stats), torch.zeros_like(scale), act, negative_slope)


@triton_op("t2ifast::affine_act_backward_triton", mutates_args=())
def affine_act_backward_triton(
    grad_out: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, act: str, negative_slope: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as the native ``t2ifast::affine_act_backward``."""
    stats = _stats_dtype(y.dtype)
    scale_acc, shift_acc = scale.to(stats), shift.to(stats)
    zeros = torch.zeros_like(scale_acc)
    sum_dz, sum_dzy, grad_y_from = _backward(
        grad_out.contiguous(), y.contiguous(), scale_acc, shift_acc, zeros, act, negative_slope
    )
    return grad_y_from(zeros, zeros), sum_dzy.to(scale.dtype), sum_dz.to(shift.dtype)
