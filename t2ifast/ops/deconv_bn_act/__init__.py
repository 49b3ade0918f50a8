"""Fused BatchNorm + activation after a (transposed) convolution: the DCGAN generator block
ConvTranspose2d -> BatchNorm2d -> ReLU and AttnGAN's up-block nearest x2 -> Conv2d 3x3 -> BatchNorm2d -> GLU.

The convolution stays with ATen (cuDNN on a GPU); what surrounds it is fused:
- training: one pass computes the per-channel batch statistics (numerically sound: two-pass / Welford
  merges, never E[y^2] - E[y]^2) and updates the running statistics in place as nn.BatchNorm2d does,
  one pass writes act(BatchNorm(y)). Backward keeps only the conv output y and two numbers per channel
  (mean, invstd): the activation's mask / GLU gate is recomputed from them, and the activation's backward
  is fused with BatchNorm's (one reduction pass, one elementwise pass). The up-block's convolution keeps its
  input x, not the upsampled tensor (4x larger), and redoes the nearest upsampling in backward;
- eval: BatchNorm is folded into the convolution's weight and bias, and the bias is added together
  with the activation in one pass.

Mixed precision follows nn.BatchNorm2d's: a float16 / bfloat16 conv output may come with float32 BatchNorm
parameters and running statistics; the statistics are computed and the running ones updated in float32, and
the output has the conv output's dtype. Under torch.autocast the convolution runs in the autocast dtype
(its input, weight and bias are cast, as autocast casts F.conv2d's) and BatchNorm in that mixed precision.
"""

import functools

import torch
import torch.nn.functional as F

from t2ifast import _autocast, _backend
from t2ifast._validation import check_choice, check_floating_tensors, check_range

from . import registration  # noqa: F401 - registers autograd and fake functions
from .fold_cache import FoldCache
from .reference import (
    ACTIVATIONS,
    activation,
    bn_act_reference,
    deconv_bn_act_reference,
    upsample_conv_bn_act_reference,
)
from .upsample_conv import upsample_conv2d

__all__ = ["bn_act", "deconv_bn_act", "fold_batch_norm", "upsample_conv_bn_act"]


def _select(op, device_type, act):
    """The backend that runs `op` with activation `act`. With GLU, automatic selection keeps CPU tensors on the
    reference: the C++ CPU kernel's sigmoid is a scalar exp, and fwd+bwd took about twice the reference's time
    (2 threads of this project's 2-core CPU, 2026-11-24: y [20, 64, 64, 64] 45 ms against 22 ms, [20, 32, 128, 128]
    96 against 55 ms; ReLU at [48, 32, 32, 32]: 2.1 against 4.0 ms). Forced, the kernel still runs."""
    return _backend.select(op, device_type, reference_on=("cpu",) if act == "glu" else ())


def _op(name, backend):
    return getattr(torch.ops.t2ifast, name if backend == "native" else f"{name}_triton")


def _check_per_channel(channels, **tensors):
    for name, value in tensors.items():
        if value is not None and tuple(value.shape) != (channels,):
            raise ValueError(
                f"{name} must have shape [{channels}] (one value per output channel of the convolution), "
                f"got {list(value.shape)}"
            )


_REDUCED_PRECISION = (torch.float16, torch.bfloat16)


def _check_bn_dtypes(like_name, like, params):
    """BatchNorm's per-channel tensors all have like's dtype or, when like is float16 / bfloat16, all float32
    (nn.BatchNorm2d's mixed precision); like and they share one device."""
    first = next(iter(params.values()), None)
    mixed = isinstance(first, torch.Tensor) and first.dtype == torch.float32
    if not (mixed and isinstance(like, torch.Tensor) and like.dtype in _REDUCED_PRECISION):
        check_floating_tensors(**{like_name: like}, **params)
        return
    check_floating_tensors(**{like_name: like})
    check_floating_tensors(**params)
    if first.device != like.device:
        name = next(iter(params))
        raise ValueError(f"{name} is on {first.device} but {like_name} is on {like.device}; they must match")


def _params_dtype(y, *params):
    """The dtype of the (checked) per-channel tensors: y's unless they are float32 for a float16 / bfloat16 y."""
    return next((p.dtype for p in params if p is not None), y.dtype)


def _check_bn_params(
    channels, like, weight, bias, running_mean, running_var, training, momentum, eps, act, slope, *, names=("y", "")
):
    """The BatchNorm and activation arguments for a conv output with `channels` channels and like's dtype;
    names = (name of `like`, prefix of the BatchNorm parameters' names) for the error messages."""
    like_name, prefix = names
    present = {
        f"{prefix}weight": weight,
        f"{prefix}bias": bias,
        "running_mean": running_mean,
        "running_var": running_var,
    }
    _check_bn_dtypes(like_name, like, {k: v for k, v in present.items() if v is not None})
    _check_per_channel(channels, **present)
    check_choice("act", act, ACTIVATIONS)
    if act == "glu" and channels % 2 != 0:
        raise ValueError(f"act='glu' splits the channels in half: it needs an even channel count, got {channels}")
    if momentum is None:
        raise ValueError(
            "momentum=None (BatchNorm's cumulative average) needs the batch count: pass 1 / num_batches_tracked, "
            "or use t2ifast.nn.DeconvBNAct, which does"
        )
    check_range("momentum", momentum, 0.0, 1.0)
    check_range("eps", eps, 0.0, float("inf"), high_inclusive=False)
    if not isinstance(slope, (int, float)):
        raise TypeError(f"negative_slope must be a number, got {type(slope).__name__}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together (or both None)")
    if not training and running_mean is None:
        raise ValueError("eval mode (training=False) needs running_mean and running_var")


def _check_bn_args(y, weight, bias, running_mean, running_var, training, momentum, eps, act, negative_slope):
    if not isinstance(y, torch.Tensor) or y.dim() < 2:
        raise ValueError(f"y must be a [N, C, ...] tensor (at least 2-D), got {getattr(y, 'shape', type(y))}")
    _check_bn_params(
        y.shape[1], y, weight, bias, running_mean, running_var, training, momentum, eps, act, negative_slope
    )
    if training:
        _check_values_per_channel(y)


def _check_values_per_channel(y):
    if y.numel() // max(y.shape[1], 1) <= 1:
        raise ValueError(f"expected more than 1 value per channel when training, got y of shape {list(y.shape)}")


def _native_input(y, backend, params_dtype):
    """y as the backend's kernel takes it. The native kernels take y and the per-channel tensors in one dtype:
    with float32 parameters for a float16 / bfloat16 y (mixed precision), y is upcast to float32 (never the
    parameters cast down: the running statistics are updated in place in their own dtype). The reference
    (F.batch_norm) and Triton implementations read each tensor in its own dtype and take y as it is."""
    return y.to(params_dtype) if backend == "native" else y


def _affine_act(y, scale, shift, act, negative_slope):
    """act(y * scale + shift) per channel: eval-mode BatchNorm, or the folded bias, with the activation."""
    backend = _select("affine_act", y.device.type, act)
    if backend == "reference":
        shape = (1, -1, *[1] * (y.dim() - 2))
        out = activation(y * scale.view(shape) + shift.view(shape), act, negative_slope)
        return out.to(y.dtype)  # mixed precision: computed in the parameters' float32
    out = _op("affine_act", backend)(_native_input(y, backend, scale.dtype), scale, shift, act, float(negative_slope))
    return out.to(y.dtype)


def _bn_act_train(y, weight, bias, running_mean, running_var, momentum, eps, act, negative_slope):
    dtype = _params_dtype(y, weight, bias, running_mean)
    if weight is None:
        weight = torch.ones(y.shape[1], dtype=dtype, device=y.device)
    if bias is None:
        bias = torch.zeros(y.shape[1], dtype=dtype, device=y.device)
    if running_mean is None:  # nothing to track: statistics go to buffers that are dropped
        running_mean = torch.zeros(y.shape[1], dtype=dtype, device=y.device)
        running_var = torch.ones(y.shape[1], dtype=dtype, device=y.device)
    backend = _select("bn_act_train", y.device.type, act)
    out, _mean, _invstd = _op("bn_act_train", backend)(
        _native_input(y, backend, dtype),
        weight,
        bias,
        running_mean,
        running_var,
        float(momentum),
        float(eps),
        act,
        float(negative_slope),
    )
    return out.to(y.dtype)


def _eval_scale_shift(weight, bias, running_mean, running_var, eps):
    """BatchNorm in eval mode as y * scale + shift (differentiable in weight and bias). Folded in at least
    float32: bfloat16 / float16 parameters would round scale and shift (as F.batch_norm does not), and flip the
    activation of outputs near zero."""
    dtype = torch.promote_types(running_var.dtype, torch.float32)
    scale = torch.rsqrt(running_var.to(dtype) + eps)
    if weight is not None:
        scale = scale * weight.to(dtype)
    shift = -running_mean.to(dtype) * scale
    if bias is not None:
        shift = shift + bias.to(dtype)
    return scale, shift


def bn_act(
    y, weight, bias, running_mean, running_var, *, training, momentum=0.1, eps=1e-5, act="relu", negative_slope=0.2
):
    """act(BatchNorm(y)) over the channels (dim 1) of y [N, C, ...].

    Args:
        y: the convolution output.
        weight, bias: BatchNorm's affine parameters [C] (None: no affine map).
        running_mean, running_var: [C]; in training they are updated in place (momentum, unbiased
            variance) as nn.BatchNorm2d does; None in training means nothing is tracked.
        training: batch statistics (True) or the running ones (False).
        act: "relu", "leaky_relu" (with negative_slope), "glu" (halves the channels: a * sigmoid(b)) or "none".

    The per-channel tensors have y's dtype or, for a float16 / bfloat16 y (a convolution under autocast),
    float32: then, as nn.BatchNorm2d, the statistics are float32 and the output has y's dtype.
    """
    _check_bn_args(y, weight, bias, running_mean, running_var, training, momentum, eps, act, negative_slope)
    if _select("bn_act_train", y.device.type, act) == "reference":
        return bn_act_reference(
            y,
            weight,
            bias,
            running_mean,
            running_var,
            training=training,
            momentum=momentum,
            eps=eps,
            act=act,
            negative_slope=negative_slope,
        )
    if training:
        return _bn_act_train(y, weight, bias, running_mean, running_var, momentum, eps, act, negative_slope)
    scale, shift = _eval_scale_shift(weight, bias, running_mean, running_var, eps)
    return _affine_act(y, scale, shift, act, negative_slope)


def fold_batch_norm(weight, bias, bn_weight, bn_bias, running_mean, running_var, eps, *, transposed, groups=1):
    """The (weight, bias) of a convolution followed by eval-mode BatchNorm, as one convolution.

    The output channels are dim 0 of a Conv2d weight [C_out, C_in/groups, kH, kW] and dim 1 of a
    ConvTranspose2d weight [C_in, C_out/groups, kH, kW], where output channel g * C_out/groups + j of
    group g is column j of the rows of that group: so the scale is applied per group (torch's
    fuse_conv_bn_eval(transpose=True) does not handle groups > 1). Differentiable in every argument.
    """
    scale, shift = _eval_scale_shift(bn_weight, bn_bias, running_mean, running_var, eps)
    if transposed:
        c_in, c_out_per_group = weight.shape[0], weight.shape[1]
        grouped = weight.reshape(groups, c_in // groups, c_out_per_group, *weight.shape[2:])
        scale_view = scale.reshape(groups, 1, c_out_per_group, *[1] * (weight.dim() - 2))
        folded_weight = (grouped * scale_view).reshape(weight.shape)
    else:
        folded_weight = weight * scale.reshape(-1, *[1] * (weight.dim() - 1))
    folded_bias = shift if bias is None else bias * scale + shift
    return folded_weight, folded_bias


def _conv_transpose_args(stride, padding, output_padding, groups, dilation):
    return {
        "stride": stride,
        "padding": padding,
        "output_padding": output_padding,
        "groups": groups,
        "dilation": dilation,
    }


def _autocast_conv_inputs(x, weight, bias):
    """(x, weight, bias) cast to the autocast dtype under torch.autocast, as autocast casts a convolution's
    (the checks and the eval-mode folding then see one dtype); unchanged outside autocast. Not tensors: left
    for the checks to name."""
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)):
        return x, weight, bias
    if bias is not None and not isinstance(bias, torch.Tensor):
        return x, weight, bias
    return _autocast.cast_lower_precision(x.device.type, x, weight, bias)


def _check_conv_weight(x, weight, bias, *, transposed, groups):
    check_floating_tensors(x=x, weight=weight, **({"bias": bias} if bias is not None else {}))
    if x.dim() != 4:
        raise ValueError(f"x must be [N, C_in, H, W], got shape {list(x.shape)}")
    if weight.dim() != 4:
        kind = "[C_in, C_out/groups, kH, kW]" if transposed else "[C_out, C_in/groups, kH, kW]"
        raise ValueError(f"weight must be {kind}, got shape {list(weight.shape)}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    c_in = weight.shape[0] if transposed else weight.shape[1] * groups
    if x.shape[1] != c_in:
        raise ValueError(
            f"x has {x.shape[1]} channels but weight {list(weight.shape)} expects {c_in} (groups={groups})"
        )
    if transposed and c_in % groups != 0:
        raise ValueError(f"weight has {c_in} input channels, not divisible by groups={groups}")
    return weight.shape[1] * groups if transposed else weight.shape[0]


def _conv_bn_act(
    x, weight, bias, bn_weight, bn_bias, running_mean, running_var, *, transposed, groups, conv, reference, **bn
):
    """act(BatchNorm2d(conv(x, weight, bias))) after the checks, for either convolution. reference(x, weight, bias,
    <BatchNorm tensors>, **bn) is the unfused block; bn holds training, momentum, eps, act and negative_slope."""
    x, weight, bias = _autocast_conv_inputs(x, weight, bias)
    channels = _check_conv_weight(x, weight, bias, transposed=transposed, groups=groups)
    settings = (bn["training"], bn["momentum"], bn["eps"], bn["act"], bn["negative_slope"])
    bn_tensors = (bn_weight, bn_bias, running_mean, running_var)
    _check_bn_params(channels, weight, *bn_tensors, *settings, names=("weight", "bn_"))
    if _select("bn_act_train", x.device.type, bn["act"]) == "reference":
        return reference(x, weight, bias, *bn_tensors, **bn)
    if bn["training"]:  # the BatchNorm arguments are checked above: straight to the fused op
        y = conv(x, weight, bias)
        _check_values_per_channel(y)
        return _bn_act_train(y, *bn_tensors, bn["momentum"], bn["eps"], bn["act"], bn["negative_slope"])
    folded_weight, ones, folded_bias = _fold_for_eval(
        weight, bias, *bn_tensors, eps=bn["eps"], transposed=transposed, groups=groups
    )
    return _affine_act(conv(x, folded_weight, None), ones, folded_bias, bn["act"], bn["negative_slope"])


def _fold(weight, bias, bn_weight, bn_bias, running_mean, running_var, *, eps, transposed, groups):
    """(folded weight in weight's dtype, ones, folded bias): the eval block is conv(x, weight) then
    act(y * 1 + bias) in one pass. Folded in float32 under mixed precision."""
    folded_weight, folded_bias = fold_batch_norm(
        weight, bias, bn_weight, bn_bias, running_mean, running_var, eps, transposed=transposed, groups=groups
    )
    return folded_weight.to(weight.dtype), torch.ones_like(folded_bias), folded_bias


_fold_for_eval = FoldCache(_fold)


def deconv_bn_act(
    x,
    weight,
    bias,
    bn_weight,
    bn_bias,
    running_mean,
    running_var,
    *,
    stride,
    padding,
    output_padding=0,
    groups=1,
    dilation=1,
    training,
    momentum=0.1,
    eps=1e-5,
    act="relu",
    negative_slope=0.2,
):
    """act(BatchNorm2d(conv_transpose2d(x, weight, bias))): the DCGAN generator block, fused around the conv.

    weight is a ConvTranspose2d weight [C_in, C_out/groups, kH, kW]; bias (of the convolution) may be None;
    the BatchNorm arguments are as in ``bn_act``. In eval mode BatchNorm is folded into weight and bias.
    Under torch.autocast the convolution runs in the autocast dtype, BatchNorm in mixed precision (see ``bn_act``).
    """
    conv_args = _conv_transpose_args(stride, padding, output_padding, groups, dilation)
    return _conv_bn_act(
        x,
        weight,
        bias,
        bn_weight,
        bn_bias,
        running_mean,
        running_var,
        transposed=True,
        groups=groups,
        conv=lambda x, weight, bias: F.conv_transpose2d(x, weight, bias, **conv_args),
        reference=functools.partial(deconv_bn_act_reference, conv_args=conv_args),
        training=training,
        momentum=momentum,
        eps=eps,
        act=act,
        negative_slope=negative_slope,
    )


def upsample_conv_bn_act(
    x,
    weight,
    bias,
    bn_weight,
    bn_bias,
    running_mean,
    running_var,
    *,
    training,
    momentum=0.1,
    eps=1e-5,
    act="glu",
    negative_slope=0.2,
    scale_factor=2,
    stride=1,
    padding=1,
    dilation=1,
    groups=1,
):
    """act(BatchNorm2d(conv2d(nearest_upsample(x), weight, bias))): AttnGAN's up-block (3x3 conv, GLU).

    weight is a Conv2d weight [C_out, C_in/groups, kH, kW] (C_out = 2 x the block's output channels for GLU);
    scale_factor is the nearest-neighbour upsampling factor. In eval mode BatchNorm is folded into the conv.
    Under torch.autocast the convolution runs in the autocast dtype, BatchNorm in mixed precision (see ``bn_act``).
    """
    conv_args = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    return _conv_bn_act(
        x,
        weight,
        bias,
        bn_weight,
        bn_bias,
        running_mean,
        running_var,
        transposed=False,
        groups=groups,
        conv=lambda x, weight, bias: upsample_conv2d(x, weight, bias, scale_factor=scale_factor, **conv_args),
        reference=functools.partial(upsample_conv_bn_act_reference, scale_factor=scale_factor, conv_args=conv_args),
        training=training,
        momentum=momentum,
        eps=eps,
        act=act,
        negative_slope=negative_slope,
    )
