"""t2ifast's fused operators. Each picks its implementation per call (see ``t2ifast.backend``)."""

from .matching_aware_loss import DiscriminatorLoss, generator_loss, matching_aware_loss

__all__ = ["DiscriminatorLoss", "generator_loss", "matching_aware_loss"]
