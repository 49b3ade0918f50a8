"""Fake (shape-only) and autograd functions of the native and Triton BatchNorm + activation ops.

``bn_act_train`` mutates the running statistics, and ``torch.library.register_autograd`` accepts only
functional ops: so its autograd kernel is registered directly to the Autograd dispatch key, an
autograd.Function that runs the op below autograd and saves y, mean and invstd for ``bn_act_backward``.
``affine_act`` is functional and gets its formula through ``register_autograd``."""

import torch

from t2ifast import _backend, _extension


def _stats_dtype(y):
    return torch.float64 if y.dtype == torch.float64 else torch.float32


def _out_shape(y, act):
    return (y.shape[0], y.shape[1] // 2 if act == "glu" else y.shape[1], *y.shape[2:])


def _bn_act_train_fake(y, weight, bias, running_mean, running_var, momentum, eps, act, negative_slope):
    channels = y.shape[1]
    stats = _stats_dtype(y)
    return y.new_empty(_out_shape(y, act)), y.new_empty(channels, dtype=stats), y.new_empty(channels, dtype=stats)


def _bn_act_backward_fake(grad_out, y, weight, bias, mean, invstd, act, negative_slope):
    return torch.empty_like(y, memory_format=torch.contiguous_format), torch.empty_like(weight), torch.empty_like(bias)


def _affine_act_fake(y, scale, shift, act, negative_slope):
    return y.new_empty(_out_shape(y, act))


def _affine_act_backward_fake(grad_out, y, scale, shift, act, negative_slope):
    return torch.empty_like(y, memory_format=torch.contiguous_format), torch.empty_like(scale), torch.empty_like(shift)


class _BatchNormActTrain(torch.autograd.Function):
    """Autograd of bn_act_train{suffix}: saves the conv output y and the per-channel statistics only."""

    @staticmethod
    def forward(ctx, suffix, y, weight, bias, running_mean, running_var, momentum, eps, act, negative_slope):
        with torch._C._AutoDispatchBelowAutograd():
            out, mean, invstd = getattr(torch.ops.t2ifast, f"bn_act_train{suffix}")(
                y, weight, bias, running_mean, running_var, momentum, eps, act, negative_slope
            )
        ctx.save_for_backward(y, weight, bias, mean, invstd)
        ctx.suffix, ctx.act, ctx.negative_slope = suffix, act, negative_slope
        ctx.mark_non_differentiable(mean, invstd)
        return out, mean, invstd

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_invstd):
        y, weight, bias, mean, invstd = ctx.saved_tensors
        grad_y, grad_weight, grad_bias = getattr(torch.ops.t2ifast, f"bn_act_backward{ctx.suffix}")(
            grad_out, y, weight, bias, mean, invstd, ctx.act, ctx.negative_slope
        )
        return None, grad_y, grad_weight, grad_bias, None, None, None, None, None, None


def _bn_act_train_autograd(suffix):
    def autograd_kernel(*args):
        return _BatchNormActTrain.apply(suffix, *args)

    return autograd_kernel


def _affine_act_setup_context(ctx, inputs, output):
    y, scale, shift, act, negative_slope = inputs
    ctx.save_for_backward(y, scale, shift)  # the activation's mask is recomputed from y, never kept
    ctx.act, ctx.negative_slope = act, negative_slope


def _affine_act_backward(backward_op):
    def backward(ctx, grad_out):
        y, scale, shift = ctx.saved_tensors
        grad_y, grad_scale, grad_shift = backward_op(grad_out, y, scale, shift, ctx.act, ctx.negative_slope)
        return grad_y, grad_scale, grad_shift, None, None

    return backward


FAKES = {
    "bn_act_train": _bn_act_train_fake,
    "bn_act_backward": _bn_act_backward_fake,
    "affine_act": _affine_act_fake,
    "affine_act_backward": _affine_act_backward_fake,
}

SUFFIXES = []  # "" for the native ops, "_triton" for the Triton ones: those registered in this process
if "bn_act_train" in _extension.NATIVE_KERNELS:
    SUFFIXES.append("")
if _backend.TRITON_AVAILABLE:
    from . import triton_kernel  # noqa: F401 - defines the t2ifast::*_triton ops

    SUFFIXES.append("_triton")

_LIBRARY = torch.library.Library("t2ifast", "IMPL")  # holds the Autograd kernels of bn_act_train*
for _suffix in SUFFIXES:
    for _name, _fake in FAKES.items():
        # Explicit fakes for the Triton ops too: triton_op's traced one would run the kernels on fake
        # tensors under TRITON_INTERPRET=1.
        torch.library.register_fake(f"t2ifast::{_name}{_suffix}")(_fake)
    torch.library.register_autograd(
        f"t2ifast::affine_act{_suffix}",
        _affine_act_backward(getattr(torch.ops.t2ifast, f"affine_act_backward{_suffix}")),
        setup_context=_affine_act_setup_context,
    )
    # allow_override: triton_op (a custom_op) registers an Autograd kernel of its own, which this replaces;
    # torch < 2.12 refuses that by default.
    _LIBRARY.impl(f"bn_act_train{_suffix}", _bn_act_train_autograd(_suffix), "Autograd", allow_override=True)
