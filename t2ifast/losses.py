"""Losses built on t2ifast's ops: AttnGAN's DAMSM word and sentence losses.

Both score every image of a batch against every caption, scale the [B, B] score matrix by gamma3 and
apply cross-entropy both ways with the matching pairs on the diagonal: each image must pick its caption
among the batch's captions (loss over captions), and each caption its image (loss over images). With
class ids, a mismatched pair whose image and caption share a class is left out of both softmaxes (its
score is set to -inf), as in the AttnGAN release.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F

from t2ifast.ops import damsm_word_scores

COSINE_EPS = 1e-8


class DAMSMLoss(NamedTuple):
    """The two cross-entropy terms; the DAMSM loss is their sum."""

    images: torch.Tensor  # each image classifies its caption among the batch's captions
    captions: torch.Tensor  # each caption classifies its image among the batch's images


def _same_class_mismatches(class_ids, batch, device):
    class_ids = torch.as_tensor(class_ids, device=device)
    if class_ids.shape != (batch,):
        raise ValueError(f"class_ids must be [B] = [{batch}], got shape {tuple(class_ids.shape)}")
    same = class_ids[:, None] == class_ids[None, :]
    return same & ~torch.eye(batch, dtype=torch.bool, device=device)


def matching_cross_entropy(scores, class_ids=None):
    """Cross-entropy both ways on a [B, B] score matrix scores[image, caption], matches on the diagonal."""
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be a square [B, B] matrix, got shape {tuple(scores.shape)}")
    batch = scores.shape[0]
    if class_ids is not None:
        scores = scores.masked_fill(_same_class_mismatches(class_ids, batch, scores.device), float("-inf"))
    labels = torch.arange(batch, device=scores.device)
    return DAMSMLoss(F.cross_entropy(scores, labels), F.cross_entropy(scores.T, labels))


def damsm_word_loss(words, lengths, regions, *, class_ids=None, gamma1=4.0, gamma2=5.0, gamma3=10.0):
    """DAMSM word loss of B matching (image, caption) pairs.

    Args:
        words: ``[B, D, T]`` word features of the captions; lengths ``[B]`` their numbers of valid words.
        regions: ``[B, D, N]`` region features of the images (image b matches caption b).
        class_ids: optional ``[B]`` class of each pair; same-class mismatches are excluded.
        gamma1, gamma2, gamma3: AttnGAN's smoothing factors (defaults 4, 5, 10).

    Returns:
        DAMSMLoss(images, captions).
    """
    if regions.shape[0] != words.shape[0]:
        raise ValueError(
            f"regions must hold one image per caption: [B={words.shape[0]}, D, N], got {tuple(regions.shape)}"
        )
    scores = damsm_word_scores(words, lengths, regions, gamma1=gamma1, gamma2=gamma2)  # [image, caption]
    return matching_cross_entropy(gamma3 * scores, class_ids)


def damsm_sentence_loss(image_codes, sentence_codes, *, class_ids=None, gamma3=10.0):
    """DAMSM sentence loss: the same cross-entropies on the cosine similarities of the global image codes
    ``[B, E]`` and sentence codes ``[B, E]`` (the product of the norms clamped at 1e-8, as AttnGAN)."""
    if image_codes.dim() != 2 or image_codes.shape != sentence_codes.shape:
        raise ValueError(
            f"image_codes and sentence_codes must both be [B, E], got {tuple(image_codes.shape)} and "
            f"{tuple(sentence_codes.shape)}"
        )
    norms = image_codes.norm(dim=1)[:, None] * sentence_codes.norm(dim=1)[None, :]
    scores = image_codes @ sentence_codes.T / norms.clamp(min=COSINE_EPS)
    return matching_cross_entropy(gamma3 * scores, class_ids)
