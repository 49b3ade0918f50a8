"""t2ifast's fused layers, drop-in for torch's module sequences, and ``fuse()`` to swap them into a model."""

from .conv_bn_act import DeconvBNAct, UpBlock
from .fuse import FusedRun, FusedSequential, FuseReport, fuse

__all__ = ["DeconvBNAct", "FuseReport", "FusedRun", "FusedSequential", "UpBlock", "fuse"]
