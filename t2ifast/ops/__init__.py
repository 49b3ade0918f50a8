"""t2ifast's fused operators. Each picks its implementation per call (see ``t2ifast.backend``)."""

from .damsm_word_scores import damsm_word_scores, damsm_word_scores_loop
from .deconv_bn_act import bn_act, deconv_bn_act, fold_batch_norm, upsample_conv_bn_act
from .matching_aware_loss import DiscriminatorLoss, generator_loss, matching_aware_loss
from .word_region_attention import word_region_attention

__all__ = [
    "DiscriminatorLoss",
    "bn_act",
    "damsm_word_scores",
    "damsm_word_scores_loop",
    "deconv_bn_act",
    "fold_batch_norm",
    "generator_loss",
    "matching_aware_loss",
    "upsample_conv_bn_act",
    "word_region_attention",
]
