"""Triton kernels of the DAMSM word scores: every (image, caption) pair, entered through ``torch.library.triton_op``.

Notation, for image i (regions r [D, N]) and caption j (words w [D, T]): s = w^T r [T, N]; a = softmax of s over
the caption's valid words; e1 = exp(gamma1 a), z = sum_n e1 and b = e1 / z (softmax over the regions); context
c = r b^T [D, T]; score = log sum_t exp(gamma2 cos(w_t, c_t)).

Forward: one program per pair. It walks the image's regions in chunks of BLOCK_N: per chunk s, a and e1 (all T
words are in the chunk) and - because a lies in [0, 1], so exp(gamma1 a) cannot overflow - z and r e1^T are
summed in the same single pass with no running maximum. Cosines and the log-sum-exp over words finish the score.

Backward, in three launches with no atomics (each output element is written by one program and every sum is
taken in a fixed order, so two runs give the same bits):
- phase A, one program per pair: recomputes the pair's forward; from the score's gradient, the gradient
  gc = gu w + g_cn c [D, T] of the context (gu, g_cn, g_wn: the gradients w.r.t. u_t = w_t . c_t, |c_t| and
  |w_t|) into a buffer [M, B, D, T], and four numbers per word, [z, kappa, gu, g_wn], into [M, B, 4, T], with
  kappa_t = sum_d gc c = sum_n b gb.
- phase B, one program per (chunk of BLOCK_N regions, image i): loops over every caption j,
  recomputing the chunk's s and gb = gc^T r, then a, b, ga = gamma1 b (gb - kappa) (the softmax over regions'
  backward) and gs = a (ga - sum_t a ga) (the softmax over words'), and sums
  grad_regions[i, :, chunk] = sum_j (gc b + w gs) in registers; one plain store.
- phase C, one program per (caption j, block of images): loops over its images and all their chunks as phase
  B does and sums grad_words[j] = sum_i (r (gs + gu b)^T + g_wn w) in registers (gu c = r (gu b)^T, so the
  context's direct part needs no buffer), stored as one partial of [image_blocks, B, D, T] that torch sums over
  the image blocks.

The products over D (s and gb, [T, D] x [D, n]) are taken in slices of BLOCK_DK rows loaded from memory (L1/L2
hits) instead of from [D, T] register tiles: their operands sit in registers, copied to every warp, and a whole
D = 256 of them spilled registers (ptxas, sm_90). float32 products use three TF32 tensor-core passes ("tf32x3":
about float32's accuracy); float64 inputs are computed in float64 with exact products; half-precision inputs are
computed in float32. D and T are padded to powers of two (T to at least 16, as ``tl.dot`` needs).
"""

import functools

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .reference import COSINE_EPS

# Launch configuration, chosen from ptxas's register report for sm_90 (Triton 3.8, D = 256, T = 18, fp32; no
# GPU to time them on yet): every tile a program holds is [BLOCK_D, BLOCK_T] or [BLOCK_D, BLOCK_N] (8192 and
# 4096 values at D = 256), each product's operands come in tf32x3's two halves, and the products over D take
# BLOCK_DK = 16 rows at a time. Forward and phase A: 16 warps, 128 registers per thread, no spills (8 warps:
# 242 registers, none). Phases B and C: 8 warps, 255 registers and 50-80 bytes of spills per thread (16 warps:
# 130-230 bytes). 32 regions per chunk spilled 0.4-0.7 KB in every phase; BLOCK_DK = 64, 0.2-0.7 KB; the whole
# D at once, 1-6 KB.
BLOCK_N = 16
BLOCK_DK = 16
NUM_WARPS_PAIRS = 16
NUM_WARPS_SUMS = 8
# Phase C: programs (captions x image blocks) per GPU multiprocessor to aim for. At 255 registers a thread, a
# multiprocessor runs one 8-warp program at a time, so this is about four waves (H200, 132 multiprocessors,
# B = M = 48: 48 x 10 programs of 5 images, the last block 3).
PROGRAMS_PER_SM = 4
# Phase C without a GPU (the interpreter): images per program, small so that several image blocks are exercised.
INTERPRETER_IMAGES_PER_PROGRAM = 2
COEFFICIENTS = 4  # per pair and word: z, kappa, gu, g_wn


@functools.cache
def _multiprocessors(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _images_per_program(device, captions, images):
    """Phase C's image block: enough (caption, block) programs to fill the GPU PROGRAMS_PER_SM times over."""
    if device.type != "cuda":
        return INTERPRETER_IMAGES_PER_PROGRAM
    blocks = triton.cdiv(PROGRAMS_PER_SM * _multiprocessors(device.index or 0), max(captions, 1))
    return triton.cdiv(images, max(1, min(images, blocks)))


def _blocks(D, T):
    block_d = max(16, triton.next_power_of_2(D))
    return block_d, max(16, triton.next_power_of_2(T)), min(BLOCK_DK, block_d)


@triton.jit
def _dot(x, y, PRECISION: tl.constexpr):
    return tl.dot(x, y, input_precision=PRECISION)


@triton.jit
def _validity(len_ptr, j, T, BLOCK_T: tl.constexpr):
    offs_t = tl.arange(0, BLOCK_T)
    return (offs_t < T) & (offs_t < tl.load(len_ptr + j))


@triton.jit
def _load_dt(x_ptr, D, T, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, DTYPE: tl.constexpr):
    """A [D, T] matrix (words or a context's gradient) as [BLOCK_D, BLOCK_T], zeros past D and T."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_T)
    mask = (offs_d < D)[:, None] & (offs_t < T)[None, :]
    return tl.load(x_ptr + offs_d[:, None] * T + offs_t[None, :], mask=mask, other=0.0).to(DTYPE)


@triton.jit
def _load_regions(r_ptr, n0, D, N, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DTYPE: tl.constexpr):
    """Regions n0 .. n0 + BLOCK_N of an image [D, N] as [BLOCK_D, BLOCK_N], zeros past D and N."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mask = (offs_d < D)[:, None] & (offs_n < N)[None, :]
    return tl.load(r_ptr + offs_d[:, None] * N + offs_n[None, :], mask=mask, other=0.0).to(DTYPE)


@triton.jit
def _slice_t(x_ptr, d0, D, T, BLOCK_DK: tl.constexpr, BLOCK_T: tl.constexpr, DTYPE: tl.constexpr):
    """Rows d0 .. d0 + BLOCK_DK of a [D, T] matrix, transposed: [BLOCK_T, BLOCK_DK]."""
    offs_d = d0 + tl.arange(0, BLOCK_DK)
    offs_t = tl.arange(0, BLOCK_T)
    mask = (offs_t < T)[:, None] & (offs_d < D)[None, :]
    return tl.load(x_ptr + offs_d[None, :] * T + offs_t[:, None], mask=mask, other=0.0).to(DTYPE)


@triton.jit
def _product_t(
    x_ptr,
    r_ptr,
    n0,
    D,
    T,
    N,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """x^T r [BLOCK_T, BLOCK_N] for x [D, T] and regions n0 .. n0 + BLOCK_N of r [D, N], over D in slices."""
    acc = tl.zeros([BLOCK_T, BLOCK_N], dtype=DTYPE)
    for d0 in range(0, D, BLOCK_DK):
        r = _load_regions(r_ptr + d0 * N, n0, D - d0, N, BLOCK_DK, BLOCK_N, DTYPE)
        acc += _dot(_slice_t(x_ptr, d0, D, T, BLOCK_DK, BLOCK_T, DTYPE), r, PRECISION)
    return acc


@triton.jit
def _products_t(
    x_ptr,
    y_ptr,
    r_ptr,
    n0,
    D,
    T,
    N,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """x^T r and y^T r as ``_product_t``, sharing the loads of r."""
    acc_x = tl.zeros([BLOCK_T, BLOCK_N], dtype=DTYPE)
    acc_y = tl.zeros([BLOCK_T, BLOCK_N], dtype=DTYPE)
    for d0 in range(0, D, BLOCK_DK):
        r = _load_regions(r_ptr + d0 * N, n0, D - d0, N, BLOCK_DK, BLOCK_N, DTYPE)
        acc_x += _dot(_slice_t(x_ptr, d0, D, T, BLOCK_DK, BLOCK_T, DTYPE), r, PRECISION)
        acc_y += _dot(_slice_t(y_ptr, d0, D, T, BLOCK_DK, BLOCK_T, DTYPE), r, PRECISION)
    return acc_x, acc_y


@triton.jit
def _attention(s, valid, n0, N, gamma1, BLOCK_N: tl.constexpr):
    """From the scores s [T, n] of a chunk: a, the softmax over the valid words of each region, and
    e1 = exp(gamma1 * a) (0 off the valid words and past N), the unnormalised softmax over regions."""
    in_n = n0 + tl.arange(0, BLOCK_N) < N
    s = tl.where(valid[:, None], s, float("-inf"))
    m = tl.max(s, axis=0)
    e = tl.exp(s - tl.where(m == float("-inf"), 0.0, m)[None, :])
    total = tl.sum(e, axis=0)
    a = e / tl.where(total > 0, total, 1.0)[None, :]
    e1 = tl.where(valid[:, None] & in_n[None, :], tl.exp(gamma1 * a), 0.0)
    return a, e1


@triton.jit
def _chunk_gradients(
    w_ptr,
    gc_ptr,
    r_ptr,
    n0,
    valid,
    z_safe,
    kappa,
    D,
    T,
    N,
    gamma1,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """For one chunk of regions of one pair: the softmax over regions b [T, n] and the gradient gs [T, n]
    w.r.t. the scores s, from the gradient gc [D, T] of the pair's context (gb = gc^T r is that of b)."""
    s, gb = _products_t(w_ptr, gc_ptr, r_ptr, n0, D, T, N, BLOCK_T, BLOCK_N, BLOCK_DK, DTYPE, PRECISION)
    a, e1 = _attention(s, valid, n0, N, gamma1, BLOCK_N)
    b = e1 / z_safe[:, None]
    ga = gamma1 * b * (gb - kappa[:, None])  # through the softmax over regions
    gs = a * (ga - tl.sum(a * ga, axis=0)[None, :])  # through the softmax over words
    return b, gs


@triton.jit
def _pair_score(
    w_ptr,
    len_ptr,
    r_ptr,
    j,
    D,
    T,
    N,
    gamma1,
    gamma2,
    eps,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One pair's forward (w_ptr: the caption's words [D, T], r_ptr: the image's regions [D, N]): the words
    [BLOCK_D, BLOCK_T] and their validity, the context, z, and the score with the cosines' parts."""
    valid = _validity(len_ptr, j, T, BLOCK_T)
    acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=DTYPE)
    z = tl.zeros([BLOCK_T], dtype=DTYPE)
    for n0 in range(0, N, BLOCK_N):
        s = _product_t(w_ptr, r_ptr, n0, D, T, N, BLOCK_T, BLOCK_N, BLOCK_DK, DTYPE, PRECISION)
        _a, e1 = _attention(s, valid, n0, N, gamma1, BLOCK_N)
        z += tl.sum(e1, axis=1)
        acc += _dot(_load_regions(r_ptr, n0, D, N, BLOCK_D, BLOCK_N, DTYPE), tl.trans(e1), PRECISION)
    context = acc / tl.where(z > 0, z, 1.0)[None, :]
    w = _load_dt(w_ptr, D, T, BLOCK_D, BLOCK_T, DTYPE)
    u = tl.sum(w * context, axis=0)
    wn = tl.sqrt(tl.sum(w * w, axis=0))
    cn = tl.sqrt(tl.sum(context * context, axis=0))
    den = wn * cn
    cos = u / tl.maximum(den, eps)
    x = tl.where(valid, gamma2 * cos, float("-inf"))
    m = tl.max(x, axis=0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    score = m_safe + tl.log(tl.sum(tl.exp(x - m_safe), axis=0))
    return w, valid, context, z, score, cos, u, wn, cn, den


@triton.jit
def _forward_kernel(
    w_ptr,
    len_ptr,
    r_ptr,
    out_ptr,
    B,
    D,
    T,
    N,
    gamma1,
    gamma2,
    eps,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    FP64: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Program pid = i * B + j: scores[i, j]."""
    DTYPE: tl.constexpr = tl.float64 if FP64 else tl.float32
    # torch.compile passes Python floats as fp64 arguments: keep the arithmetic in the compute dtype as in eager
    gamma1, gamma2, eps = tl.cast(gamma1, DTYPE), tl.cast(gamma2, DTYPE), tl.cast(eps, DTYPE)
    pid = tl.program_id(0).to(tl.int64)  # offsets like pid * D * T pass 2**31 at large batches
    i = pid // B
    j = pid % B
    pair = _pair_score(
        w_ptr + j * D * T, len_ptr, r_ptr + i * D * N, j, D, T, N, gamma1, gamma2, eps,
        BLOCK_D, BLOCK_T, BLOCK_N, BLOCK_DK, DTYPE, PRECISION,
    )  # fmt: skip
    tl.store(out_ptr + pid, pair[4].to(out_ptr.dtype.element_ty))


@triton.jit
def _backward_pairs_kernel(
    g_ptr,
    w_ptr,
    len_ptr,
    r_ptr,
    gc_ptr,
    coef_ptr,
    B,
    D,
    T,
    N,
    gamma1,
    gamma2,
    eps,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    FP64: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Phase A, program pid = i * B + j: the context's gradient into gc [M, B, D, T] and [z, kappa, gu, g_wn]
    into coef [M, B, 4, T]."""
    DTYPE: tl.constexpr = tl.float64 if FP64 else tl.float32
    gamma1, gamma2, eps = tl.cast(gamma1, DTYPE), tl.cast(gamma2, DTYPE), tl.cast(eps, DTYPE)
    pid = tl.program_id(0).to(tl.int64)  # offsets like pid * D * T pass 2**31 at large batches
    i = pid // B
    j = pid % B
    w, valid, context, z, score, cos, u, wn, cn, den = _pair_score(
        w_ptr + j * D * T, len_ptr, r_ptr + i * D * N, j, D, T, N, gamma1, gamma2, eps,
        BLOCK_D, BLOCK_T, BLOCK_N, BLOCK_DK, DTYPE, PRECISION,
    )  # fmt: skip
    grad = tl.load(g_ptr + pid).to(DTYPE)
    # score = logsumexp(gamma2 * cos) -> cos = u / max(|w| |c|, eps)
    gcos = tl.where(valid, grad * gamma2 * tl.exp(gamma2 * cos - score), 0.0)
    gu = gcos / tl.maximum(den, eps)
    gden = tl.where(den > eps, -gcos * u / tl.maximum(den * den, eps * eps), 0.0)
    g_wn = gden * cn / tl.where(wn > 0, wn, 1.0)  # d|w|/dw = w / |w|
    g_cn = gden * wn / tl.where(cn > 0, cn, 1.0)
    gc = gu[None, :] * w + g_cn[None, :] * context
    kappa = gu * u + g_cn * cn * cn  # sum_d gc * context
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_T)
    in_t = offs_t < T
    tl.store(
        gc_ptr + pid * D * T + offs_d[:, None] * T + offs_t[None, :], gc, mask=(offs_d < D)[:, None] & in_t[None, :]
    )
    coef = coef_ptr + pid * 4 * T + offs_t
    tl.store(coef, z, mask=in_t)
    tl.store(coef + T, kappa, mask=in_t)
    tl.store(coef + 2 * T, gu, mask=in_t)
    tl.store(coef + 3 * T, g_wn, mask=in_t)


@triton.jit
def _load_coefficient(coef_ptr, pair, k, T, BLOCK_T: tl.constexpr, DTYPE: tl.constexpr):
    """Coefficient k of [z, kappa, gu, g_wn] of every word of one pair [BLOCK_T] (0 past T)."""
    offs_t = tl.arange(0, BLOCK_T)
    return tl.load(coef_ptr + (pair * 4 + k) * T + offs_t, mask=offs_t < T, other=0.0).to(DTYPE)


@triton.jit
def _backward_regions_kernel(
    w_ptr,
    len_ptr,
    r_ptr,
    gc_ptr,
    coef_ptr,
    gr_ptr,
    B,
    D,
    T,
    N,
    gamma1,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    FP64: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Phase B, program (chunk, image i): grad_regions[i, :, chunk], summed over the captions in order."""
    DTYPE: tl.constexpr = tl.float64 if FP64 else tl.float32
    gamma1 = tl.cast(gamma1, DTYPE)
    n0 = tl.program_id(0) * BLOCK_N
    i = tl.program_id(1).to(tl.int64)
    r_ptr += i * D * N
    acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=DTYPE)
    for j in range(0, B):
        pair = i * B + j
        z = _load_coefficient(coef_ptr, pair, 0, T, BLOCK_T, DTYPE)
        kappa = _load_coefficient(coef_ptr, pair, 1, T, BLOCK_T, DTYPE)
        b, gs = _chunk_gradients(
            w_ptr + j * D * T, gc_ptr + pair * D * T, r_ptr, n0, _validity(len_ptr, j, T, BLOCK_T),
            tl.where(z > 0, z, 1.0), kappa, D, T, N, gamma1, BLOCK_T, BLOCK_N, BLOCK_DK, DTYPE, PRECISION,
        )  # fmt: skip
        acc += _dot(_load_dt(gc_ptr + pair * D * T, D, T, BLOCK_D, BLOCK_T, DTYPE), b, PRECISION)
        acc += _dot(_load_dt(w_ptr + j * D * T, D, T, BLOCK_D, BLOCK_T, DTYPE), gs, PRECISION)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mask = (offs_d < D)[:, None] & (offs_n < N)[None, :]
    tl.store(gr_ptr + i * D * N + offs_d[:, None] * N + offs_n[None, :], acc, mask=mask)


@triton.jit
def _backward_words_kernel(
    w_ptr,
    len_ptr,
    r_ptr,
    gc_ptr,
    coef_ptr,
    gw_ptr,
    M,
    B,
    D,
    T,
    N,
    images_per_program,
    gamma1,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    FP64: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Phase C, program (caption j, image block k): the part of grad_words[j] from images k * images_per_program
    onwards, into partial [image_blocks, B, D, T]."""
    DTYPE: tl.constexpr = tl.float64 if FP64 else tl.float32
    gamma1 = tl.cast(gamma1, DTYPE)
    j = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1).to(tl.int64)
    valid = _validity(len_ptr, j, T, BLOCK_T)
    acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=DTYPE)
    g_wn_sum = tl.zeros([BLOCK_T], dtype=DTYPE)
    i_start = k * images_per_program
    for i in range(i_start, tl.minimum(i_start + images_per_program, M)):
        pair = i * B + j
        z = _load_coefficient(coef_ptr, pair, 0, T, BLOCK_T, DTYPE)
        kappa = _load_coefficient(coef_ptr, pair, 1, T, BLOCK_T, DTYPE)
        gu = _load_coefficient(coef_ptr, pair, 2, T, BLOCK_T, DTYPE)
        g_wn_sum += _load_coefficient(coef_ptr, pair, 3, T, BLOCK_T, DTYPE)
        for n0 in range(0, N, BLOCK_N):
            b, gs = _chunk_gradients(
                w_ptr + j * D * T, gc_ptr + pair * D * T, r_ptr + i * D * N, n0, valid, tl.where(z > 0, z, 1.0),
                kappa, D, T, N, gamma1, BLOCK_T, BLOCK_N, BLOCK_DK, DTYPE, PRECISION,
            )  # fmt: skip
            r = _load_regions(r_ptr + i * D * N, n0, D, N, BLOCK_D, BLOCK_N, DTYPE)
            acc += _dot(r, tl.trans(gs + gu[:, None] * b), PRECISION)  # r gs^T, and gu c = r (gu b)^T
    acc += g_wn_sum[None, :] * _load_dt(w_ptr + j * D * T, D, T, BLOCK_D, BLOCK_T, DTYPE)
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_T)
    mask = (offs_d < D)[:, None] & (offs_t < T)[None, :]
    tl.store(gw_ptr + (k * B + j) * D * T + offs_d[:, None] * T + offs_t[None, :], acc, mask=mask)


def _meta(words):
    """BLOCK_D, BLOCK_T, BLOCK_DK, the compute dtype, and the kernels' dtype and precision constants."""
    _B, D, T = words.shape
    dtype = torch.float64 if words.dtype == torch.float64 else torch.float32
    precision = "ieee" if dtype == torch.float64 else "tf32x3"
    return *_blocks(D, T), dtype, {"FP64": dtype == torch.float64, "PRECISION": precision}


@triton_op("t2ifast::damsm_word_scores_triton", mutates_args=())
def damsm_word_scores_triton(
    words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor, gamma1: float, gamma2: float
) -> torch.Tensor:
    """scores [M, B]; see ``t2ifast.ops.damsm_word_scores``."""
    words, lengths, regions = words.contiguous(), lengths.contiguous(), regions.contiguous()
    B, D, T = words.shape
    M, _, N = regions.shape
    scores = words.new_empty(M, B)
    block_d, block_t, block_dk, _dtype, meta = _meta(words)
    if M * B > 0:
        wrap_triton(_forward_kernel)[(M * B,)](
            words, lengths, regions, scores, B, D, T, N, gamma1, gamma2, COSINE_EPS,
            BLOCK_D=block_d, BLOCK_T=block_t, BLOCK_N=BLOCK_N, BLOCK_DK=block_dk, num_warps=NUM_WARPS_PAIRS, **meta,
        )  # fmt: skip
    return scores


@triton_op("t2ifast::damsm_word_scores_backward_triton", mutates_args=())
def damsm_word_scores_backward_triton(
    grad_scores: torch.Tensor,
    words: torch.Tensor,
    lengths: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float,
    gamma2: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_words, grad_regions) of <grad_scores, scores>."""
    grad_scores, words = grad_scores.contiguous(), words.contiguous()
    lengths, regions = lengths.contiguous(), regions.contiguous()
    B, D, T = words.shape
    M, _, N = regions.shape
    if M * B == 0 or N == 0:
        return torch.zeros_like(words), torch.zeros_like(regions)
    block_d, block_t, block_dk, dtype, meta = _meta(words)
    blocks = {"BLOCK_D": block_d, "BLOCK_T": block_t, "BLOCK_N": BLOCK_N, "BLOCK_DK": block_dk, **meta}
    grad_context = torch.empty(M, B, D, T, device=words.device, dtype=dtype)
    coefficients = torch.empty(M, B, COEFFICIENTS, T, device=words.device, dtype=dtype)
    wrap_triton(_backward_pairs_kernel)[(M * B,)](
        grad_scores, words, lengths, regions, grad_context, coefficients, B, D, T, N, gamma1, gamma2, COSINE_EPS,
        num_warps=NUM_WARPS_PAIRS, **blocks,
    )  # fmt: skip
    grad_regions = torch.empty(M, D, N, device=regions.device, dtype=dtype)
    wrap_triton(_backward_regions_kernel)[(triton.cdiv(N, BLOCK_N), M)](
        words, lengths, regions, grad_context, coefficients, grad_regions, B, D, T, N, gamma1,
        num_warps=NUM_WARPS_SUMS, **blocks,
    )  # fmt: skip
    images_per_program = _images_per_program(words.device, B, M)
    image_blocks = triton.cdiv(M, images_per_program)
    partial = torch.empty(image_blocks, B, D, T, device=words.device, dtype=dtype)
    wrap_triton(_backward_words_kernel)[(B, image_blocks)](
        words, lengths, regions, grad_context, coefficients, partial, M, B, D, T, N, images_per_program, gamma1,
        num_warps=NUM_WARPS_SUMS, **blocks,
    )  # fmt: skip
    grad_words = partial.sum(0)  # in a fixed order
    return grad_words.to(words.dtype), grad_regions.to(regions.dtype)
