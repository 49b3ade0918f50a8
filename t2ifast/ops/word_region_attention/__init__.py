"""Word-region attention: AttnGAN's generator attention F_attn, fused.

For each sample b and each image region n, the region attends over the sample's words:
scores[t, n] = regions[b, :, n] . words[b, :, t], softmax over the unpadded words t, and the region's
word-context is the attention-weighted sum of the words. The [B, T, N] attention map is returned only on
request; the native and Triton kernels otherwise never write it (backward recomputes it from a per-region
log-sum-exp saved by the forward).
"""

import torch

from t2ifast import _autocast, _backend
from t2ifast._validation import check_floating_tensors

from . import registration  # noqa: F401 - registers autograd and fake functions
from .reference import word_region_attention_reference

_OP = "word_region_attention"
# Automatic selection keeps CPU tensors on the reference: its batched matmuls and softmax run on BLAS and
# vectorised exp, while the C++ CPU kernel's per-region softmax is scalar. Forward + backward with the attention
# map, 2 threads, this project's 2-core CPU (2026-11-24): B = 20, C = 32, T = 18, N = 64^2: 24.8 ms reference,
# 34.5 ms native; N = 32^2: 5.6 against 9.5 ms. The CPU kernel runs when native is forced.
REFERENCE_ON = ("cpu",)
# The CUDA kernel keeps each region's T scores in registers, instantiated for T up to this.
NATIVE_CUDA_MAX_WORDS = 64


def _check_arguments(regions, words, pad_mask):
    check_floating_tensors(regions=regions, words=words)
    if regions.dim() != 3:
        raise ValueError(f"regions must be [B, C, N], got shape {tuple(regions.shape)}")
    B, C, _ = regions.shape
    if words.dim() != 3 or words.shape[:2] != (B, C):
        raise ValueError(f"words must be [B, C, T] = [{B}, {C}, T] to match regions, got shape {tuple(words.shape)}")
    if pad_mask is not None:
        if not isinstance(pad_mask, torch.Tensor) or pad_mask.dtype != torch.bool:
            raise TypeError(f"pad_mask must be a bool tensor (True = padding) or None, got {pad_mask!r:.60}")
        if pad_mask.shape != (B, words.shape[2]):
            raise ValueError(f"pad_mask must be [B, T] = [{B}, {words.shape[2]}], got shape {tuple(pad_mask.shape)}")
        if pad_mask.device != regions.device:
            raise ValueError(f"pad_mask is on {pad_mask.device} but regions is on {regions.device}; they must match")


def _native_limit(words):
    T = words.shape[2]
    if words.device.type == "cuda" and T > NATIVE_CUDA_MAX_WORDS:
        return f"its CUDA kernel supports at most {NATIVE_CUDA_MAX_WORDS} words (T), got T = {T}"
    return None


def word_region_attention(regions, words, pad_mask=None, *, return_attn=False):
    """Attention of every image region over its sample's words.

    Args:
        regions: image features ``[B, C, N]`` (N = H * W), the queries.
        words: word features ``[B, C, T]``, already projected to C channels, the keys and values.
        pad_mask: ``[B, T]`` bool, True where a word is padding, or None (no padding). Sample b is masked
            by its own row ``pad_mask[b]``. (AttnGAN's released ``GlobalAttentionGeneral``, and the many
            copies of it, tile the [B, T] mask with ``mask.repeat(queryL, 1)`` against scores viewed as
            [B * N, T]: score row b * N + n is masked with mask row (b * N + n) mod B, in general another
            sample's. This function does not reproduce that.)
        return_attn: also return the attention map.

    Returns:
        ``(context, attn)``: context ``[B, C, N]`` = sum over t of attn[b, t, n] * words[b, :, t];
        attn ``[B, T, N]`` (softmax over T) when ``return_attn``, else None. A sample whose words are all
        padding gets zero context and zero attention (not NaN), and zero gradients.

    Under torch.autocast, regions and words are cast to the autocast dtype, as autocast casts the matrix
    products this replaces (the kernels keep the softmax statistics in float32).
    """
    if isinstance(regions, torch.Tensor) and isinstance(words, torch.Tensor):
        regions, words = _autocast.cast_lower_precision(regions.device.type, regions, words)
    _check_arguments(regions, words, pad_mask)
    backend = _backend.select(_OP, regions.device.type, reference_on=REFERENCE_ON, native_limit=_native_limit(words))
    if backend == "reference":
        return word_region_attention_reference(regions, words, pad_mask, return_attn)
    if backend == "native":
        op = torch.ops.t2ifast.word_region_attention
    else:
        op = torch.ops.t2ifast.word_region_attention_triton
    context, attn, _ = op(regions, words, pad_mask, return_attn)
    return context, (attn if return_attn else None)
