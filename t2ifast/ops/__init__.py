"""t2ifast's fused operators. Each picks its implementation per call (see ``t2ifast.backend``)."""

from .deconv_bn_act import bn_act, deconv_bn_act, fold_batch_norm, upsample_conv_bn_act
from .matching_aware_loss import DiscriminatorLoss, generator_loss, matching_aware_loss

__all__ = [
    "DiscriminatorLoss",
    "bn_act",
    "deconv_bn_act",
    "fold_batch_norm",
    "generator_loss",
    "matching_aware_loss",
    "upsample_conv_bn_act",
]
