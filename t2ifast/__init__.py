"""t2ifast: text-to-image GANs on fused CUDA, C++ and Triton kernels."""

from t2ifast import ops
from t2ifast._backend import BACKENDS, BackendUnavailableError, backend
from t2ifast._extension import ExtensionNotBuiltWarning

__version__ = "0.1.0"
__all__ = ["BACKENDS", "BackendUnavailableError", "ExtensionNotBuiltWarning", "backend", "ops"]
