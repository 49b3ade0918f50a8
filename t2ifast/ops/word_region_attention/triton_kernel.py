"""Triton kernels of word-region attention, entered through ``torch.library.triton_op``.

One program owns a tile of BLOCK_N regions of one sample and the sample's whole word matrix (C and T
padded to powers of two, T to at least 16 for ``tl.dot``): the scores are one [BLOCK_N, C] x [C, T]
product, the softmax over T stays in registers, and the context is one [C, T] x [T, BLOCK_N] product.
Only context and the per-region log-sum-exp are written, plus the attention when it is asked for.

Backward recomputes the attention from the log-sum-exp and writes grad_regions. grad_words takes two more
products per tile; each program walks several tiles of its sample (enough programs to fill the GPU a few
times over) and sums them in registers, and the per-program partial sums ([B, programs, C, T], float32) are
added up afterwards in a fixed order, so the result is deterministic.

float32 products use three TF32 tensor-core passes ("tf32x3": about float32's accuracy; one TF32 pass would
lose ~3 digits against the reference), float64 exact ones; half-precision inputs use the tensor cores as
they are.
"""

import functools

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

# Elements of the [C, BLOCK_N] tiles a program holds (sets BLOCK_N from C), and warps per program.
TILE_ELEMENTS = 8192
NUM_WARPS = 4
# Backward programs per GPU multiprocessor (each walks its share of a sample's tiles).
PROGRAMS_PER_SM = 4


def _blocks(channels, words):
    block_c = max(16, triton.next_power_of_2(channels))
    block_t = max(16, triton.next_power_of_2(words))
    block_n = max(16, min(128, TILE_ELEMENTS // block_c))
    return block_c, block_t, block_n


def _dot_precision(dtype):
    return {torch.float32: "tf32x3", torch.float64: "ieee"}.get(dtype, "tf32")  # "tf32": ignored for halves


@functools.cache
def _multiprocessors(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _programs_per_sample(device, batch, tiles):
    """Backward programs per sample: PROGRAMS_PER_SM per multiprocessor over the batch, at most one per tile.
    Without a GPU (the interpreter) two, so that the tile loop is exercised."""
    processors = _multiprocessors(device.index or 0) if device.type == "cuda" else 1
    target = PROGRAMS_PER_SM * processors if device.type == "cuda" else 2
    return max(1, min(tiles, triton.cdiv(target, max(batch, 1))))


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _scores(
    r_ptr,
    w_ptr,
    mask_ptr,
    b,
    pid_n,
    C,
    N,
    T,
    HAS_MASK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The tile's regions [BLOCK_C, BLOCK_N], words [BLOCK_C, BLOCK_T], scores [BLOCK_N, BLOCK_T] and the
    validity of each word (padded words and the columns past T are invalid)."""
    offs_c = tl.arange(0, BLOCK_C)
    offs_t = tl.arange(0, BLOCK_T)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    in_c = offs_c < C
    in_t = offs_t < T
    r = tl.load(r_ptr + b * C * N + offs_c[:, None] * N + offs_n[None, :], mask=in_c[:, None] & (offs_n < N)[None, :])
    w = tl.load(w_ptr + b * C * T + offs_c[:, None] * T + offs_t[None, :], mask=in_c[:, None] & in_t[None, :])
    valid = in_t
    if HAS_MASK:
        padded = tl.load(mask_ptr + b * T + offs_t, mask=in_t, other=1)
        valid = valid & (padded == 0)
    s = _dot(tl.trans(r), w, PRECISION)
    return r, w, s, valid, offs_c, offs_t, offs_n


@triton.jit
def _forward_kernel(
    r_ptr,
    w_ptr,
    mask_ptr,
    ctx_ptr,
    attn_ptr,
    lse_ptr,
    C,
    N,
    T,
    HAS_MASK: tl.constexpr,
    WRITE_ATTN: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    b = tl.program_id(1)
    _r, w, s, valid, offs_c, offs_t, offs_n = _scores(
        r_ptr, w_ptr, mask_ptr, b, pid_n, C, N, T, HAS_MASK, BLOCK_C, BLOCK_T, BLOCK_N, PRECISION
    )
    s = tl.where(valid[None, :], s, float("-inf"))
    m = tl.max(s, axis=1)
    empty = m == float("-inf")  # every word of the sample is padding
    e = tl.exp(s - tl.where(empty, 0.0, m)[:, None])
    total = tl.sum(e, axis=1)
    total = tl.where(empty, 1.0, total)
    p = e / total[:, None]  # zero rows where empty
    lse = tl.where(empty, float("inf"), m + tl.log(total))
    in_n = offs_n < N
    tl.store(lse_ptr + b * N + offs_n, lse, mask=in_n)
    ctx = _dot(w, tl.trans(p.to(w.dtype)), PRECISION)  # [BLOCK_C, BLOCK_N]
    ctx_mask = (offs_c < C)[:, None] & in_n[None, :]
    tl.store(
        ctx_ptr + b * C * N + offs_c[:, None] * N + offs_n[None, :], ctx.to(ctx_ptr.dtype.element_ty), mask=ctx_mask
    )
    if WRITE_ATTN:
        attn_mask = in_n[:, None] & (offs_t < T)[None, :]
        attn_offsets = b * T * N + offs_t[None, :] * N + offs_n[:, None]
        tl.store(attn_ptr + attn_offsets, p.to(attn_ptr.dtype.element_ty), mask=attn_mask)


@triton.jit
def _backward_tile(
    g_ptr,
    gattn_ptr,
    r_ptr,
    w_ptr,
    mask_ptr,
    lse_ptr,
    gr_ptr,
    b,
    pid_n,
    C,
    N,
    T,
    HAS_MASK: tl.constexpr,
    HAS_GRAD_ATTN: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Writes grad_regions of tile pid_n of sample b; returns the tile's share of grad_words [BLOCK_C, BLOCK_T]."""
    r, w, s, valid, offs_c, offs_t, offs_n = _scores(
        r_ptr, w_ptr, mask_ptr, b, pid_n, C, N, T, HAS_MASK, BLOCK_C, BLOCK_T, BLOCK_N, PRECISION
    )
    in_n = offs_n < N
    in_c = offs_c < C
    lse = tl.load(lse_ptr + b * N + offs_n, mask=in_n, other=float("inf"))
    # lse = +inf (fully padded sample, or past N): the attention is 0
    p = tl.where(valid[None, :], tl.exp(s - lse[:, None]), 0.0)
    tile = in_c[:, None] & in_n[None, :]
    g = tl.load(g_ptr + b * C * N + offs_c[:, None] * N + offs_n[None, :], mask=tile)
    dp = _dot(tl.trans(g), w, PRECISION)  # [BLOCK_N, BLOCK_T]
    if HAS_GRAD_ATTN:
        attn_mask = in_n[:, None] & (offs_t < T)[None, :]
        dp += tl.load(gattn_ptr + b * T * N + offs_t[None, :] * N + offs_n[:, None], mask=attn_mask).to(tl.float32)
    delta = tl.sum(p * dp, axis=1)
    ds = p * (dp - delta[:, None])
    gr = _dot(w, tl.trans(ds.to(w.dtype)), PRECISION)  # [BLOCK_C, BLOCK_N]
    tl.store(gr_ptr + b * C * N + offs_c[:, None] * N + offs_n[None, :], gr.to(gr_ptr.dtype.element_ty), mask=tile)
    return _dot(r, ds.to(r.dtype), PRECISION) + _dot(g, p.to(g.dtype), PRECISION)


@triton.jit
def _backward_kernel(
    g_ptr,
    gattn_ptr,
    r_ptr,
    w_ptr,
    mask_ptr,
    lse_ptr,
    gr_ptr,
    partial_ptr,
    C,
    N,
    T,
    HAS_MASK: tl.constexpr,
    HAS_GRAD_ATTN: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Program (pid, b) walks tiles pid, pid + programs, ... of sample b and writes its sum of their grad_words."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    programs = tl.num_programs(0)
    gw = tl.zeros([BLOCK_C, BLOCK_T], dtype=partial_ptr.dtype.element_ty)
    for pid_n in range(pid, tl.cdiv(N, BLOCK_N), programs):
        gw += _backward_tile(
            g_ptr, gattn_ptr, r_ptr, w_ptr, mask_ptr, lse_ptr, gr_ptr, b, pid_n, C, N, T,
            HAS_MASK, HAS_GRAD_ATTN, BLOCK_C, BLOCK_T, BLOCK_N, PRECISION,
        )  # fmt: skip
    offs_c = tl.arange(0, BLOCK_C)
    offs_t = tl.arange(0, BLOCK_T)
    partial = partial_ptr + (b * programs + pid) * BLOCK_C * BLOCK_T
    tl.store(partial + offs_c[:, None] * BLOCK_T + offs_t[None, :], gw)


def _mask_argument(pad_mask, fallback):
    """The mask as bytes (1 = padding), or any tensor as an unread placeholder when there is none. A copy, not
    a bool -> uint8 view: torch.compile (torch 2.11) cannot lower that view."""
    if pad_mask is None:
        return fallback, False
    return pad_mask.to(torch.uint8, memory_format=torch.contiguous_format), True  # one copy, contiguous


@triton_op("t2ifast::word_region_attention_triton", mutates_args=())
def word_region_attention_triton(
    regions: torch.Tensor, words: torch.Tensor, pad_mask: torch.Tensor | None, return_attn: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as the native ``t2ifast::word_region_attention``."""
    regions, words = regions.contiguous(), words.contiguous()
    B, C, N = regions.shape
    T = words.shape[2]
    context = regions.new_empty(B, C, N)
    attn = regions.new_empty(B if return_attn else 0, T, N)
    lse = regions.new_empty(B, N, dtype=torch.float64 if regions.dtype == torch.float64 else torch.float32)
    block_c, block_t, block_n = _blocks(C, T)
    mask, has_mask = _mask_argument(pad_mask, regions)
    if B > 0 and N > 0:
        wrap_triton(_forward_kernel)[(triton.cdiv(N, block_n), B)](
            regions,
            words,
            mask,
            context,
            attn if return_attn else context,
            lse,
            C,
            N,
            T,
            HAS_MASK=has_mask,
            WRITE_ATTN=return_attn,
            BLOCK_C=block_c,
            BLOCK_T=block_t,
            BLOCK_N=block_n,
            PRECISION=_dot_precision(regions.dtype),
            num_warps=NUM_WARPS,
        )
    return context, attn, lse


@triton_op("t2ifast::word_region_attention_backward_triton", mutates_args=())
def word_region_attention_backward_triton(
    grad_context: torch.Tensor,
    grad_attn: torch.Tensor | None,
    regions: torch.Tensor,
    words: torch.Tensor,
    pad_mask: torch.Tensor | None,
    lse: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as the native ``t2ifast::word_region_attention_backward``."""
    regions, words, grad_context, lse = (
        regions.contiguous(),
        words.contiguous(),
        grad_context.contiguous(),
        lse.contiguous(),
    )
    B, C, N = regions.shape
    T = words.shape[2]
    block_c, block_t, block_n = _blocks(C, T)
    programs = _programs_per_sample(regions.device, B, triton.cdiv(N, block_n))
    grad_regions = torch.empty_like(regions)
    launch = B > 0 and N > 0
    # each program writes its whole [BLOCK_C, BLOCK_T] entry; without a launch grad_words is zero
    partials = (regions.new_empty if launch else regions.new_zeros)(B, programs, block_c, block_t, dtype=lse.dtype)
    mask, has_mask = _mask_argument(pad_mask, regions)
    if grad_attn is not None:
        grad_attn = grad_attn.contiguous()
    if launch:
        wrap_triton(_backward_kernel)[(programs, B)](
            grad_context,
            grad_attn if grad_attn is not None else grad_context,
            regions,
            words,
            mask,
            lse,
            grad_regions,
            partials,
            C,
            N,
            T,
            HAS_MASK=has_mask,
            HAS_GRAD_ATTN=grad_attn is not None,
            BLOCK_C=block_c,
            BLOCK_T=block_t,
            BLOCK_N=block_n,
            PRECISION=_dot_precision(regions.dtype),
            num_warps=NUM_WARPS,
        )
    grad_words = partials.sum(dim=1)[:, :C, :T].to(words.dtype).contiguous()
    return grad_regions, grad_words
