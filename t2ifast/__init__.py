"""t2ifast: text-to-image GANs on fused CUDA, C++ and Triton kernels."""

from t2ifast import nn, ops
from t2ifast._backend import BACKENDS, BackendUnavailableError, backend
from t2ifast._extension import ExtensionNotBuiltWarning
from t2ifast.nn import fuse

__version__ = "0.1.0"
__all__ = ["BACKENDS", "BackendUnavailableError", "ExtensionNotBuiltWarning", "backend", "fuse", "nn", "ops"]
