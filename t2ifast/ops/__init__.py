"""t2ifast's fused operators. Each picks its implementation per call (see ``t2ifast.backend``)."""

from .damsm_word_scores import damsm_word_scores, damsm_word_scores_loop
from .matching_aware_loss import DiscriminatorLoss, generator_loss, matching_aware_loss
from .word_region_attention import word_region_attention

__all__ = [
    "DiscriminatorLoss",
    "damsm_word_scores",
    "damsm_word_scores_loop",
    "generator_loss",
    "matching_aware_loss",
    "word_region_attention",
]
