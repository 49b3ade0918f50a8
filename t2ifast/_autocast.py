"""torch.autocast for the fused ops, applied at their Python faces.

Autocast rewrites ATen ops only: a custom op, and the argument checks before it, would see the dtypes
autocast leaves behind (a float32 weight against a bfloat16 activation). So under autocast each public
function casts its inputs as autocast would cast the plain-PyTorch code it replaces: convolutions and
matrix products to the autocast dtype (autocast's lower-precision ops), losses to float32 (its float32
ops). BatchNorm is not cast, as autocast leaves nn.BatchNorm2d: a float16 / bfloat16 input with float32
parameters and running statistics (see ``t2ifast.ops.bn_act``).

``torch.library.register_autocast`` does not fit: it casts every argument of an op to one dtype, so
BatchNorm's running statistics would be updated in place on a throwaway copy; and it acts only when the op
runs, after the Python checks and never on the reference backend.
"""

import torch


def autocast_dtype(device_type):
    """The dtype of autocast's lower-precision ops on `device_type` tensors, or None outside autocast."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def cast(dtype, *tensors):
    """The tensors cast to `dtype` as autocast casts: float16, bfloat16 and float32 ones (not float64, nor None)."""
    return tuple(
        t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t for t in tensors
    )


def cast_lower_precision(device_type, *tensors):
    """The tensors of an op autocast runs in lower precision (a convolution, a matmul): cast to the autocast
    dtype under autocast, unchanged outside it."""
    dtype = autocast_dtype(device_type)
    return tensors if dtype is None else cast(dtype, *tensors)


def cast_float32(device_type, *tensors):
    """The tensors of an op autocast runs in float32 (a loss): cast to float32 under autocast, unchanged outside it."""
    return tensors if autocast_dtype(device_type) is None else cast(torch.float32, *tensors)
