"""Triton kernels of the DAMSM word scores: every (image, caption) pair in one launch.

One program owns one pair (image i, caption j). It holds the caption's words [D, T] and walks the image's
regions in chunks of BLOCK_N: per chunk, the scores words^T . regions, the softmax over the caption's
words (all T are in the chunk), and - because that attention lies in [0, 1], so exp(gamma1 * a) cannot
overflow - the softmax over regions needs no running maximum: its numerators and denominators are summed
in the same single pass, and so is the region-context of every word. Cosines and the log-sum-exp over
words finish the pair's score.

Backward recomputes the pair's forward, then walks the regions once more: the gradients of the two
softmaxes are local to a chunk once the per-word sums are known. A pair's contributions to the image's
and the caption's gradients are added with float32 atomics (every image meets every caption), so their
summation order, and the last bits, can vary between runs.
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .reference import COSINE_EPS

BLOCK_N = 32
NUM_WARPS = 8


@triton.jit
def _pair_context(
    w_ptr,
    len_ptr,
    r_ptr,
    i,
    j,
    D,
    T,
    N,
    gamma1,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Caption j's words w [BLOCK_D, BLOCK_T], their validity, and for image i the region-context of each
    word [BLOCK_D, BLOCK_T] with the softmax-over-regions denominators z [BLOCK_T]."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_T)
    in_d = offs_d < D
    length = tl.load(len_ptr + j)
    valid = (offs_t < T) & (offs_t < length)
    w = tl.load(w_ptr + j * D * T + offs_d[:, None] * T + offs_t[None, :], mask=in_d[:, None] & (offs_t < T)[None, :])
    w = w.to(tl.float32)
    w_t = tl.trans(w)
    acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    z = tl.zeros([BLOCK_T], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        in_n = offs_n < N
        r = tl.load(r_ptr + i * D * N + offs_d[:, None] * N + offs_n[None, :], mask=in_d[:, None] & in_n[None, :])
        r = r.to(tl.float32)
        _a, e1 = _chunk_attention(w_t, r, valid, in_n, gamma1)
        z += tl.sum(e1, axis=1)
        acc += tl.dot(r, tl.trans(e1), input_precision="ieee")
    context = acc / tl.where(z > 0, z, 1.0)[None, :]
    return w, valid, context, z


@triton.jit
def _chunk_attention(w_t, r, valid, in_n, gamma1):
    """a [T, n]: softmax over the valid words of each region; e1 = exp(gamma1 * a) (0 off the valid
    words and past N): the unnormalised softmax over regions."""
    s = tl.dot(w_t, r, input_precision="ieee")
    s = tl.where(valid[:, None], s, float("-inf"))
    m = tl.max(s, axis=0)
    e = tl.exp(s - tl.where(m == float("-inf"), 0.0, m)[None, :])
    total = tl.sum(e, axis=0)
    a = e / tl.where(total > 0, total, 1.0)[None, :]
    e1 = tl.where(valid[:, None] & in_n[None, :], tl.exp(gamma1 * a), 0.0)
    return a, e1


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
):
    # torch.compile passes Python floats as fp64 arguments: keep the arithmetic in fp32 as in eager
    gamma1, gamma2, eps = tl.cast(gamma1, tl.float32), tl.cast(gamma2, tl.float32), tl.cast(eps, tl.float32)
    pid = tl.program_id(0)
    i = pid // B
    j = pid % B
    w, valid, context, _z = _pair_context(w_ptr, len_ptr, r_ptr, i, j, D, T, N, gamma1, BLOCK_D, BLOCK_T, BLOCK_N)
    score, _cos, _u, _wn, _cn, _den = _pair_score(w, valid, context, gamma2, eps)
    tl.store(out_ptr + pid, score.to(out_ptr.dtype.element_ty))


@triton.jit
def _backward_kernel(
    g_ptr,
    w_ptr,
    len_ptr,
    r_ptr,
    gw_ptr,
    gr_ptr,
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
):
    # torch.compile passes Python floats as fp64 arguments: keep the arithmetic in fp32 as in eager
    gamma1, gamma2, eps = tl.cast(gamma1, tl.float32), tl.cast(gamma2, tl.float32), tl.cast(eps, tl.float32)
    pid = tl.program_id(0)
    i = pid // B
    j = pid % B
    w, valid, context, z = _pair_context(w_ptr, len_ptr, r_ptr, i, j, D, T, N, gamma1, BLOCK_D, BLOCK_T, BLOCK_N)
    score, cos, u, wn, cn, den = _pair_score(w, valid, context, gamma2, eps)
    grad = tl.load(g_ptr + pid).to(tl.float32)
    # score = logsumexp(gamma2 * cos) -> cos = u / max(|w| |c|, eps)
    gcos = tl.where(valid, grad * gamma2 * tl.exp(gamma2 * cos - score), 0.0)
    gu = gcos / tl.maximum(den, eps)
    gden = tl.where(den > eps, -gcos * u / tl.maximum(den * den, eps * eps), 0.0)
    g_wn = gden * cn / tl.where(wn > 0, wn, 1.0)  # d|w|/dw = w / |w|
    g_cn = gden * wn / tl.where(cn > 0, cn, 1.0)
    gw = gu[None, :] * context + g_wn[None, :] * w
    gc = gu[None, :] * w + g_cn[None, :] * context  # gradient of the context
    kappa = tl.sum(gc * context, axis=0)  # sum_n b[t, n] * gb[t, n]
    z_safe = tl.where(z > 0, z, 1.0)
    w_t = tl.trans(w)
    gc_t = tl.trans(gc)
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_T)
    in_d = offs_d < D
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        in_n = offs_n < N
        r_offsets = i * D * N + offs_d[:, None] * N + offs_n[None, :]
        r_mask = in_d[:, None] & in_n[None, :]
        r = tl.load(r_ptr + r_offsets, mask=r_mask).to(tl.float32)
        a, e1 = _chunk_attention(w_t, r, valid, in_n, gamma1)
        b = e1 / z_safe[:, None]  # softmax over regions
        gb = tl.dot(gc_t, r, input_precision="ieee")  # [T, n]
        ga = gamma1 * b * (gb - kappa[:, None])  # through the softmax over regions
        gs = a * (ga - tl.sum(a * ga, axis=0)[None, :])  # through the softmax over words
        gr = tl.dot(gc, b, input_precision="ieee") + tl.dot(w, gs, input_precision="ieee")  # [D, n]
        tl.atomic_add(gr_ptr + r_offsets, gr, mask=r_mask)
        gw += tl.dot(r, tl.trans(gs), input_precision="ieee")
    w_mask = in_d[:, None] & (offs_t < T)[None, :]
    tl.atomic_add(gw_ptr + j * D * T + offs_d[:, None] * T + offs_t[None, :], gw, mask=w_mask)


def _blocks(D, T):
    return max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(T))


@triton_op("t2ifast::damsm_word_scores_triton", mutates_args=())
def damsm_word_scores_triton(
    words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor, gamma1: float, gamma2: float
) -> torch.Tensor:
    """scores [M, B]; see ``t2ifast.ops.damsm_word_scores``."""
    words, lengths, regions = words.contiguous(), lengths.contiguous(), regions.contiguous()
    B, D, T = words.shape
    M, _, N = regions.shape
    scores = words.new_empty(M, B)
    block_d, block_t = _blocks(D, T)
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
    grad_words = torch.zeros(B, D, T, device=words.device, dtype=torch.float32)
    grad_regions = torch.zeros(M, D, N, device=regions.device, dtype=torch.float32)
    block_d, block_t = _blocks(D, T)
    if M * B > 0:
        wrap_triton(_backward_kernel)[(M * B,)](
            grad_scores,
            words,
            lengths,
            regions,
            grad_words,
            grad_regions,
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
        )
    return grad_words.to(words.dtype), grad_regions.to(regions.dtype)
