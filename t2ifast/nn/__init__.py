"""t2ifast's layers: drop-in modules built on the fused ops."""

from .word_region_attention import WordRegionAttention

__all__ = ["WordRegionAttention"]
