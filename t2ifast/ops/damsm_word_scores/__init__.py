"""DAMSM word scores (AttnGAN): the attention-driven matching score of every image with every caption.

For image i (region features [D, N]) and caption j (word features [D, T], lengths[j] valid words):
each region attends over the caption's words (softmax over words), that attention scaled by gamma1 is
normalised over the regions for each word (softmax over regions), each word gets the attention-weighted
sum of the regions as its region-context, and R(i, j) = log sum_t exp(gamma2 * cos(word_t, context_t))
over the valid words. All M x B pairs are computed in one launch (the AttnGAN release loops over the
captions in Python); backward recomputes the attention instead of keeping M x B x T x N of it.
"""

import torch

from t2ifast import _autocast, _backend
from t2ifast._validation import check_floating_tensors

from . import registration  # noqa: F401 - registers autograd and fake functions
from .reference import damsm_word_scores_loop, damsm_word_scores_reference

_OP = "damsm_word_scores"
# Automatic selection keeps CPU and CUDA tensors on the reference, whose batched matmuls run on BLAS / cuBLAS; the
# fused kernels (one program per pair) were measured slower forward + backward. CPU, this project's 2-core CPU
# (2026-11-24, 2 threads): B = M = 32, D = 128, T = 18, N = 64: 38 ms reference, 73 ms native; B = M = 48, D = 256,
# T = 18, N = 289: 0.56 s against 2.0 s. CUDA, H200 (2026-11-24, benchmarks/RESULTS.md), B = M = 48, D = 256,
# T = 18, N = 289: 3.0 ms reference, 17.1 ms native, 98 ms Triton. A forced backend still runs its kernels.
REFERENCE_ON = ("cpu", "cuda")
__all__ = ["damsm_word_scores", "damsm_word_scores_loop", "damsm_word_scores_reference"]


def _check_arguments(words, lengths, regions):
    check_floating_tensors(words=words, regions=regions)
    if words.dim() != 3:
        raise ValueError(f"words must be [B, D, T], got shape {tuple(words.shape)}")
    B, D, _ = words.shape
    if regions.dim() != 3 or regions.shape[1] != D:
        raise ValueError(f"regions must be [M, D, N] = [M, {D}, N] to match words, got shape {tuple(regions.shape)}")
    if not isinstance(lengths, torch.Tensor) or lengths.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"lengths must be an int32 or int64 tensor, got {lengths!r:.60}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must be [B] = [{B}], got shape {tuple(lengths.shape)}")
    if lengths.device != words.device:
        raise ValueError(f"lengths is on {lengths.device} but words is on {words.device}; they must match")


def damsm_word_scores(words, lengths, regions, *, gamma1=4.0, gamma2=5.0):
    """Word-level DAMSM matching scores of every image with every caption.

    Args:
        words: word features ``[B, D, T]`` of B captions (padded to T words).
        lengths: ``[B]`` integer, the number of valid words of each caption, in [1, T] (not checked on
            the device: a length of 0 gives a score of -inf).
        regions: region features ``[M, D, N]`` of M images (N = 17 * 17 in AttnGAN).
        gamma1: sharpness of the attention over regions. gamma2: of the sum over words.

    Returns:
        scores ``[M, B]``: scores[i, j] = R(image i, caption j). (AttnGAN's DAMSM loss multiplies them by
        gamma3 and applies cross-entropy both ways: ``t2ifast.losses.damsm_word_loss``.)

    Under torch.autocast words and regions are cast to float32, as autocast casts the cosine similarities and
    softmaxes of a loss.
    """
    if isinstance(words, torch.Tensor) and isinstance(regions, torch.Tensor):
        words, regions = _autocast.cast_float32(words.device.type, words, regions)
    _check_arguments(words, lengths, regions)
    backend = _backend.select(_OP, words.device.type, reference_on=REFERENCE_ON)
    if backend == "reference":
        return damsm_word_scores_reference(words, lengths, regions, float(gamma1), float(gamma2))
    op = torch.ops.t2ifast.damsm_word_scores if backend == "native" else torch.ops.t2ifast.damsm_word_scores_triton
    return op(words, lengths, regions, float(gamma1), float(gamma2))
