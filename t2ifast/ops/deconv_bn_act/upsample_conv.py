"""conv2d(nearest_upsample(x)) that keeps x, not the upsampled tensor, for backward.

Autograd would save the upsampled input of the convolution: scale_factor² times x (4× in AttnGAN's up-block,
where it is the largest tensor the block keeps). Nearest upsampling is a cheap copy, so backward redoes it
from x instead: only the upsampling is recomputed, never the convolution.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair


class _UpsampleConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, scale_factor, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.scale_factor, ctx.has_bias = scale_factor, bias is not None
        ctx.conv = (_pair(stride), _pair(padding), _pair(dilation), groups)
        upsampled = F.interpolate(x, scale_factor=scale_factor, mode="nearest")
        return F.conv2d(upsampled, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        stride, padding, dilation, groups = ctx.conv
        with torch.enable_grad():  # autograd of the upsampling alone gives grad_x from grad_upsampled
            x = x.detach().requires_grad_(need_x)
            upsampled = F.interpolate(x, scale_factor=ctx.scale_factor, mode="nearest")
        grad_upsampled, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_y,
            upsampled.detach(),
            weight,
            [weight.shape[0]] if ctx.has_bias else None,
            stride,
            padding,
            dilation,
            False,
            [0, 0],
            groups,
            [need_x, need_weight, need_bias and ctx.has_bias],
        )
        grad_x = torch.autograd.grad(upsampled, x, grad_upsampled)[0] if need_x else None
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


def upsample_conv2d(x, weight, bias, *, scale_factor, stride, padding, dilation, groups):
    """F.conv2d(F.interpolate(x, scale_factor=scale_factor, mode="nearest"), weight, bias, ...) keeping x for
    backward. A padding given by name ("same", "valid") goes through autograd as usual."""
    if isinstance(padding, str):
        upsampled = F.interpolate(x, scale_factor=scale_factor, mode="nearest")
        return F.conv2d(upsampled, weight, bias, stride, padding, dilation, groups)
    return _UpsampleConv2d.apply(x, weight, bias, scale_factor, stride, padding, dilation, groups)
