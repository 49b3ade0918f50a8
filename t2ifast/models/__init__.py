"""Text-to-image GAN models built on t2ifast's fused layers and losses."""

from .matching_aware_discriminator import MatchingAwareDiscriminator

__all__ = ["MatchingAwareDiscriminator"]
