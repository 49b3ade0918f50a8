"""Triton kernels of the DAMSM word scores: every (image, caption) pair, entered through ``torch.library.triton_op``.

Forward: one program per pair (image i, caption j). It holds the caption's words [D, T] and walks the image's
regions in chunks of BLOCK_N: per chunk, the scores words^T . regions, the softmax over the caption's words
(all T are in the chunk), and - because that attention lies in [0, 1], so exp(gamma1 * a) cannot overflow - the
softmax over regions needs no running maximum: its numerators and denominators z [T] are summed in the same
single pass, and so is the region-context of every word. Cosines and the log-sum-exp over words finish the
pair's score.

Backward, in three launches with no atomics (each output element is written by one program, and every sum is
taken in a fixed order, so two runs give the same bits):
- phase A, one program per pair: recomputes the pair's forward and stores its context [D, T] and five numbers
  per word, [z, kappa, gu, g_cn, g_wn]: the softmax-over-regions denominators, kappa_t = sum_n b_tn gb_tn, and
  the gradients of the score w.r.t. each word's dot product u_t = w_t . c_t and norms |c_t|, |w_t|. From
  these, the gradient of the context is gc = gu w + g_cn c and the direct part of grad_words is
  gu c + g_wn w. Buffers [M, B, D, T] and [M, B, 5, T] in the compute dtype.
- phase B, one program per (image i, chunk of BLOCK_N_BACKWARD regions): keeps the chunk r [D, n] in registers,
  loops over every caption j recomputing the chunk's attention from w_j and z_ij, and sums
  grad_regions[i, :, chunk] = sum_j (gc_ij b + w_j gs) with b = e1 / z (softmax over regions),
  ga = gamma1 b (gc^T r - kappa) and gs = a (ga - sum_t a ga) (the two softmaxes' backward); one store.
- phase C, one program per (caption j, block of images): loops over its images and all their chunks, recomputing
  gs as phase B does, and sums the direct part plus r gs^T into a [D, T] register tile, stored as one partial
  [image_blocks, B, D, T]; torch sums the partials over the image blocks.

float32 products use three TF32 tensor-core passes ("tf32x3": about float32's accuracy), float64 inputs are
computed in float64 with exact products; half-precision inputs are computed in float32. D and T are padded to
powers of two (T to at least 16, as ``tl.dot`` needs).
"""

import functools

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .reference import COSINE_EPS

# Regions per chunk and warps per program. Forward and phase A hold three [BLOCK_D, 32]-sized tiles (words,
# context accumulator, region chunk): at D = 256 with 8 warps about 96 fp32 registers per thread. Phases B and C
# hold more: the words, context and its gradient ([BLOCK_D, BLOCK_T], 8192 values each at D = 256, T <= 32) plus
# a region chunk and an accumulator; BLOCK_N_BACKWARD = 16 keeps those two at 4096 values each and 8 warps keep
# the whole at about 128 registers per thread, under the 255 limit without spilling (32 regions or 4 warps
# would double the tiles' share).
BLOCK_N = 32
BLOCK_N_BACKWARD = 16
NUM_WARPS = 8
# Phase C: programs per GPU multiprocessor to aim for (captions x image blocks).
PROGRAMS_PER_SM = 2
# Phase C without a GPU (the interpreter): images per program, small so that several image blocks are exercised.
INTERPRETER_IMAGES_PER_PROGRAM = 2
COEFFICIENTS = 5  # per pair and word: z, kappa, gu, g_cn, g_wn


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
    return max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(T))


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _dot_precision(dtype):
    return "ieee" if dtype == torch.float64 else "tf32x3"


@triton.jit
def _dot(x, y, PRECISION: tl.constexpr):
    return tl.dot(x, y, input_precision=PRECISION)


@triton.jit
def _load_words(w_ptr, len_ptr, j, D, T, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, DTYPE: tl.constexpr):
    """Caption j's words [BLOCK_D, BLOCK_T] (zeros past D and T) and the validity of each word [BLOCK_T]."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_T)
    length = tl.load(len_ptr + j)
    valid = (offs_t < T) & (offs_t < length)
    mask = (offs_d < D)[:, None] & (offs_t < T)[None, :]
    w = tl.load(w_ptr + j * D * T + offs_d[:, None] * T + offs_t[None, :], mask=mask, other=0.0)
    return w.to(DTYPE), valid


@triton.jit
def _load_chunk(r_ptr, i, n0, D, N, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DTYPE: tl.constexpr):
    """Image i's regions n0 .. n0 + BLOCK_N [BLOCK_D, BLOCK_N] (zeros past D and N), and which are inside N."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    in_n = offs_n < N
    mask = (offs_d < D)[:, None] & in_n[None, :]
    r = tl.load(r_ptr + i * D * N + offs_d[:, None] * N + offs_n[None, :], mask=mask, other=0.0)
    return r.to(DTYPE), in_n


@triton.jit
def _chunk_attention(w_t, r, valid, in_n, gamma1, PRECISION: tl.constexpr):
    """a [T, n]: softmax over the valid words of each region; e1 = exp(gamma1 * a) (0 off the valid
    words and past N): the unnormalised softmax over regions."""
    s = _dot(w_t, r, PRECISION)
    s = tl.where(valid[:, None], s, float("-inf"))
    m = tl.max(s, axis=0)
    e = tl.exp(s - tl.where(m == float("-inf"), 0.0, m)[None, :])
    total = tl.sum(e, axis=0)
    a = e / tl.where(total > 0, total, 1.0)[None, :]
    e1 = tl.where(valid[:, None] & in_n[None, :], tl.exp(gamma1 * a), 0.0)
    return a, e1


@triton.jit
def _chunk_score_gradient(w_t, gc_t, r, valid, in_n, z_safe, kappa, gamma1, PRECISION: tl.constexpr):
    """For one chunk of regions: the softmax over regions b [T, n] and the gradient gs [T, n] w.r.t. the
    scores words^T . regions, from the gradient gc of the pair's context (gb = gc^T r is that of b)."""
    a, e1 = _chunk_attention(w_t, r, valid, in_n, gamma1, PRECISION)
    b = e1 / z_safe[:, None]
    gb = _dot(gc_t, r, PRECISION)
    ga = gamma1 * b * (gb - kappa[:, None])  # through the softmax over regions
    gs = a * (ga - tl.sum(a * ga, axis=0)[None, :])  # through the softmax over words
    return b, gs


@triton.jit
def _pair_context(
    w,
    valid,
    r_ptr,
    i,
    D,
    N,
    gamma1,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """For image i and a caption's words w: the region-context of each word [BLOCK_D, BLOCK_T] and the
    softmax-over-regions denominators z [BLOCK_T]."""
    w_t = tl.trans(w)
    acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=DTYPE)
    z = tl.zeros([BLOCK_T], dtype=DTYPE)
    for n0 in range(0, N, BLOCK_N):
        r, in_n = _load_chunk(r_ptr, i, n0, D, N, BLOCK_D, BLOCK_N, DTYPE)
        _a, e1 = _chunk_attention(w_t, r, valid, in_n, gamma1, PRECISION)
        z += tl.sum(e1, axis=1)
        acc += _dot(r, tl.trans(e1), PRECISION)
    context = acc / tl.where(z > 0, z, 1.0)[None, :]
    return context, z


@triton.jit
def _pair_score(w, valid, context, gamma2, eps):
    """Cosine of each word with its context, and the pair's score log sum_t exp(gamma2 * cos)."""
    u = tl.sum(w * context, axis=0)
    wn = tl.sqrt(tl.sum(w * w, axis=0))
    cn = tl.sqrt(tl.sum(context * context, axis=0))
    den = wn * cn
    cos = u / tl.maximum(den, eps)
    x = tl.where(valid, gamma2 * cos, float("-inf"))
    m = tl.max(x, axis=0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    score = m_safe + tl.log(tl.sum(tl.exp(x - m_safe), axis=0))
    return score, cos, u, wn, cn, den


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
    FP64: tl.constexpr,
    PRECISION: tl.constexpr,
):
    DTYPE: tl.constexpr = tl.float64 if FP64 else tl.float32
    # torch.compile passes Python floats as fp64 arguments: keep the arithmetic in the compute dtype as in eager
    gamma1, gamma2, eps = tl.cast(gamma1, DTYPE), tl.cast(gamma2, DTYPE), tl.cast(eps, DTYPE)
    pid = tl.program_id(0)
    i = pid // B
    j = pid % B
    w, valid = _load_words(w_ptr, len_ptr, j, D, T, BLOCK_D, BLOCK_T, DTYPE)
    context, _z = _pair_context(w, valid, r_ptr, i, D, N, gamma1, BLOCK_D, BLOCK_T, BLOCK_N, DTYPE, PRECISION)
    score, _cos, _u, _wn, _cn, _den = _pair_score(w, valid, context, gamma2, eps)
    tl.store(out_ptr + pid, score.to(out_ptr.dtype.element_ty))


@triton.jit
def _backward_pairs_kernel(
    g_ptr,
    w_ptr,
    len_ptr,
    r_ptr,
    ctx_ptr,
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
    FP64: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Phase A, program pid = i * B + j: the pair's context into ctx [M, B, D, T] and [z, kappa, gu, g_cn, g_wn]
    into coef [M, B, 5, T]."""
    DTYPE: tl.constexpr = tl.float64 if FP64 else tl.float32
    # torch.compile passes Python floats as fp64 arguments: keep the arithmetic in the compute dtype as in eager
    gamma1, gamma2, eps = tl.cast(gamma1, DTYPE), tl.cast(gamma2, DTYPE), tl.cast(eps, DTYPE)
    pid = tl.program_id(0)
    i = pid // B
    j = pid % B
    w, valid = _load_words(w_ptr, len_ptr, j, D, T, BLOCK_D, BLOCK_T, DTYPE)
    context, z = _pair_context(w, valid, r_ptr, i, D, N, gamma1, BLOCK_D, BLOCK_T, BLOCK_N, DTYPE, PRECISION)
    score, cos, u, wn, cn, den = _pair_score(w, valid, context, gamma2, eps)
    grad = tl.load(g_ptr + pid).to(DTYPE)
    # score = logsumexp(gamma2 * cos) -> cos = u / max(|w| |c|, eps)
    gcos = tl.where(valid, grad * gamma2 * tl.exp(gamma2 * cos - score), 0.0)
    gu = gcos / tl.maximum(den, eps)
    gden = tl.where(den > eps, -gcos * u / tl.maximum(den * den, eps * eps), 0.0)
    g_wn = gden * cn / tl.where(wn > 0, wn, 1.0)  # d|w|/dw = w / |w|
    g_cn = gden * wn / tl.where(cn > 0, cn, 1.0)
    kappa = gu * u + g_cn * cn * cn  # sum_d gc * context = sum_n b[t, n] * gb[t, n]
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_T)
    in_t = offs_t < T
    ctx_mask = (offs_d < D)[:, None] & in_t[None, :]
    tl.store(ctx_ptr + pid * D * T + offs_d[:, None] * T + offs_t[None, :], context, mask=ctx_mask)
    coef = coef_ptr + pid * 5 * T + offs_t
    tl.store(coef, z, mask=in_t)
    tl.store(coef + T, kappa, mask=in_t)
    tl.store(coef + 2 * T, gu, mask=in_t)
    tl.store(coef + 3 * T, g_cn, mask=in_t)
    tl.store(coef + 4 * T, g_wn, mask=in_t)


@triton.jit
def _load_pair(ctx_ptr, coef_ptr, w, pair, D, T, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, DTYPE: tl.constexpr):
    """Phase A's results for one pair: the context's gradient gc [BLOCK_D, BLOCK_T], the direct part of the
    words' gradient gu c + g_wn w, and z (1 where it is 0) and kappa [BLOCK_T]."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_T)
    in_t = offs_t < T
    mask = (offs_d < D)[:, None] & in_t[None, :]
    context = tl.load(ctx_ptr + pair * D * T + offs_d[:, None] * T + offs_t[None, :], mask=mask, other=0.0)
    coef = coef_ptr + pair * 5 * T + offs_t
    z = tl.load(coef, mask=in_t, other=0.0)
    kappa = tl.load(coef + T, mask=in_t, other=0.0)
    gu = tl.load(coef + 2 * T, mask=in_t, other=0.0)
    g_cn = tl.load(coef + 3 * T, mask=in_t, other=0.0)
    g_wn = tl.load(coef + 4 * T, mask=in_t, other=0.0)
    gc = gu[None, :] * w + g_cn[None, :] * context
    gw = gu[None, :] * context + g_wn[None, :] * w
    return gc.to(DTYPE), gw.to(DTYPE), tl.where(z > 0, z, 1.0).to(DTYPE), kappa.to(DTYPE)


@triton.jit
def _backward_regions_kernel(
    w_ptr,
    len_ptr,
    r_ptr,
    ctx_ptr,
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
    FP64: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Phase B, program (chunk, image i): grad_regions[i, :, chunk], summed over every caption in order."""
    DTYPE: tl.constexpr = tl.float64 if FP64 else tl.float32
    gamma1 = tl.cast(gamma1, DTYPE)
    n0 = tl.program_id(0) * BLOCK_N
    i = tl.program_id(1)
    r, in_n = _load_chunk(r_ptr, i, n0, D, N, BLOCK_D, BLOCK_N, DTYPE)
    acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=DTYPE)
    for j in range(0, B):
        w, valid = _load_words(w_ptr, len_ptr, j, D, T, BLOCK_D, BLOCK_T, DTYPE)
        gc, _gw, z_safe, kappa = _load_pair(ctx_ptr, coef_ptr, w, i * B + j, D, T, BLOCK_D, BLOCK_T, DTYPE)
        b, gs = _chunk_score_gradient(tl.trans(w), tl.trans(gc), r, valid, in_n, z_safe, kappa, gamma1, PRECISION)
        acc += _dot(gc, b, PRECISION) + _dot(w, gs, PRECISION)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mask = (offs_d < D)[:, None] & in_n[None, :]
    tl.store(gr_ptr + i * D * N + offs_d[:, None] * N + offs_n[None, :], acc, mask=mask)


@triton.jit
def _backward_words_kernel(
    w_ptr,
    len_ptr,
    r_ptr,
    ctx_ptr,
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
    FP64: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Phase C, program (caption j, image block k): the part of grad_words[j] from images
    k * images_per_program onwards, into partial [image_blocks, B, D, T]."""
    DTYPE: tl.constexpr = tl.float64 if FP64 else tl.float32
    gamma1 = tl.cast(gamma1, DTYPE)
    j = tl.program_id(0)
    k = tl.program_id(1)
    w, valid = _load_words(w_ptr, len_ptr, j, D, T, BLOCK_D, BLOCK_T, DTYPE)
    w_t = tl.trans(w)
    acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=DTYPE)
    i_start = k * images_per_program
    i_end = tl.minimum(i_start + images_per_program, M)
    for i in range(i_start, i_end):
        gc, gw, z_safe, kappa = _load_pair(ctx_ptr, coef_ptr, w, i * B + j, D, T, BLOCK_D, BLOCK_T, DTYPE)
        acc += gw
        gc_t = tl.trans(gc)
        for n0 in range(0, N, BLOCK_N):
            r, in_n = _load_chunk(r_ptr, i, n0, D, N, BLOCK_D, BLOCK_N, DTYPE)
            _b, gs = _chunk_score_gradient(w_t, gc_t, r, valid, in_n, z_safe, kappa, gamma1, PRECISION)
            acc += _dot(r, tl.trans(gs), PRECISION)
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_T)
    mask = (offs_d < D)[:, None] & (offs_t < T)[None, :]
    tl.store(gw_ptr + (k * B + j) * D * T + offs_d[:, None] * T + offs_t[None, :], acc, mask=mask)


def _meta(words):
    _B, D, T = words.shape
    block_d, block_t = _blocks(D, T)
    dtype = _compute_dtype(words.dtype)
    precision = _dot_precision(dtype)
    return block_d, block_t, dtype, {"FP64": dtype == torch.float64, "PRECISION": precision}


@triton_op("t2ifast::damsm_word_scores_triton", mutates_args=())
def damsm_word_scores_triton(
    words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor, gamma1: float, gamma2: float
) -> torch.Tensor:
    """scores [M, B]; see ``t2ifast.ops.damsm_word_scores``."""
    words, lengths, regions = words.contiguous(), lengths.contiguous(), regions.contiguous()
    B, D, T = words.shape
    M, _, N = regions.shape
    scores = words.new_empty(M, B)
    block_d, block_t, _dtype, meta = _meta(words)
    if M * B > 0:
        wrap_triton(_forward_kernel)[(M * B,)](
            words,
            lengths,
            regions,
            scores,
            B,
            D,
            T,
            N,
            gamma1,
            gamma2,
            COSINE_EPS,
            BLOCK_D=block_d,
            BLOCK_T=block_t,
            BLOCK_N=BLOCK_N,
            num_warps=NUM_WARPS,
            **meta,
        )
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
    block_d, block_t, dtype, meta = _meta(words)
    if M * B == 0 or N == 0:
        return torch.zeros_like(words), torch.zeros_like(regions)
    blocks = {"BLOCK_D": block_d, "BLOCK_T": block_t, "num_warps": NUM_WARPS, **meta}
    context = torch.empty(M, B, D, T, device=words.device, dtype=dtype)
    coefficients = torch.empty(M, B, COEFFICIENTS, T, device=words.device, dtype=dtype)
    wrap_triton(_backward_pairs_kernel)[(M * B,)](
        grad_scores, words, lengths, regions, context, coefficients, B, D, T, N, gamma1, gamma2, COSINE_EPS,
        BLOCK_N=BLOCK_N, **blocks,
    )  # fmt: skip
    grad_regions = torch.empty(M, D, N, device=regions.device, dtype=dtype)
    wrap_triton(_backward_regions_kernel)[(triton.cdiv(N, BLOCK_N_BACKWARD), M)](
        words, lengths, regions, context, coefficients, grad_regions, B, D, T, N, gamma1,
        BLOCK_N=BLOCK_N_BACKWARD, **blocks,
    )  # fmt: skip
    images_per_program = _images_per_program(words.device, B, M)
    image_blocks = triton.cdiv(M, images_per_program)
    partial = torch.empty(image_blocks, B, D, T, device=words.device, dtype=dtype)
    wrap_triton(_backward_words_kernel)[(B, image_blocks)](
        words, lengths, regions, context, coefficients, partial, M, B, D, T, N, images_per_program, gamma1,
        BLOCK_N=BLOCK_N_BACKWARD, **blocks,
    )  # fmt: skip
    grad_words = partial.sum(0) if image_blocks > 1 else partial[0]
    return grad_words.to(words.dtype), grad_regions.to(regions.dtype)
