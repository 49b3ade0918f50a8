"""t2ifast's layers: drop-in modules built on the fused ops, and ``fuse()`` to swap them into a model."""

from .conv_bn_act import DeconvBNAct, UpBlock
from .fuse import FusedRun, FusedSequential, FuseReport, fuse
from .word_region_attention import WordRegionAttention

__all__ = ["DeconvBNAct", "FuseReport", "FusedRun", "FusedSequential", "UpBlock", "WordRegionAttention", "fuse"]
