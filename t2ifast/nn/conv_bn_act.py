"""Fused (transposed) convolution + BatchNorm + activation layers.

The layers keep torch's own modules as children, under the names an ``nn.Sequential`` of them would
give: ``DeconvBNAct`` holds ``0`` (nn.ConvTranspose2d) and ``1`` (nn.BatchNorm2d), so its state_dict is
that of ``nn.Sequential(nn.ConvTranspose2d(...), nn.BatchNorm2d(...), nn.ReLU())`` and checkpoints load
both ways unchanged; ``UpBlock`` holds AttnGAN's ``upBlock`` children ``0`` (nn.Upsample), ``1`` (nn.Conv2d
3x3), ``2`` (nn.BatchNorm2d), ``3`` (nn.GLU; nn.ReLU or nn.LeakyReLU for StackGAN's). Only the forward
differs: it runs the fused op.
"""

from torch import nn

from t2ifast import ops

ACTIVATIONS = ("relu", "leaky_relu", "glu", "none")


def activation_of(module):
    """(act, negative_slope) of an activation module the fused op can run, or None."""
    if isinstance(module, nn.ReLU):
        return "relu", 0.0
    if isinstance(module, nn.LeakyReLU):
        return "leaky_relu", float(module.negative_slope)
    if isinstance(module, nn.GLU) and module.dim in (1, -3):  # -3 is the channel dim of [N, C, H, W]
        return "glu", 0.0
    return None


def batch_norm_arguments(bn):
    """(training, running_mean, running_var, momentum) exactly as nn.BatchNorm2d.forward chooses them;
    counts the batch in num_batches_tracked when it is tracked. momentum=None is BatchNorm's cumulative
    moving average: the factor 1 / num_batches_tracked."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    running_mean = bn.running_mean if track else None
    running_var = bn.running_var if track else None
    return use_batch_stats, running_mean, running_var, momentum


def check_fusable_conv(conv):
    if conv.padding_mode != "zeros":
        raise ValueError(f"only padding_mode='zeros' convolutions can be fused, got {conv.padding_mode!r}")
    if isinstance(conv.padding, str):
        raise ValueError(f"only numeric conv padding can be fused, got padding={conv.padding!r}")


def deconv_bn_act_forward(x, conv, bn, act, negative_slope):
    """act(bn(conv(x))) for a ConvTranspose2d and a BatchNorm2d, through the fused op."""
    training, running_mean, running_var, momentum = batch_norm_arguments(bn)
    return ops.deconv_bn_act(
        x,
        conv.weight,
        conv.bias,
        bn.weight,
        bn.bias,
        running_mean,
        running_var,
        stride=conv.stride,
        padding=conv.padding,
        output_padding=conv.output_padding,
        groups=conv.groups,
        dilation=conv.dilation,
        training=training,
        momentum=momentum,
        eps=bn.eps,
        act=act,
        negative_slope=negative_slope,
    )


def upsample_conv_bn_act_forward(x, upsample, conv, bn, act, negative_slope):
    """act(bn(conv(upsample(x)))) for a nearest nn.Upsample, a Conv2d and a BatchNorm2d, through the fused op."""
    training, running_mean, running_var, momentum = batch_norm_arguments(bn)
    return ops.upsample_conv_bn_act(
        x,
        conv.weight,
        conv.bias,
        bn.weight,
        bn.bias,
        running_mean,
        running_var,
        training=training,
        momentum=momentum,
        eps=bn.eps,
        act=act,
        negative_slope=negative_slope,
        scale_factor=upsample.scale_factor,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
    )


class DeconvBNAct(nn.Module):
    """ConvTranspose2d -> BatchNorm2d -> activation (relu, leaky_relu, glu or none), fused around the conv.

    Arguments are those of nn.ConvTranspose2d (bias defaults to False, as before a BatchNorm) and of
    nn.BatchNorm2d (eps, momentum, affine, track_running_stats), plus ``act`` and ``negative_slope``.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        groups=1,
        bias=False,
        dilation=1,
        *,
        act="relu",
        negative_slope=0.2,
        eps=1e-5,
        momentum=0.1,
        affine=True,
        track_running_stats=True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {', '.join(map(repr, ACTIVATIONS))}; got {act!r}")
        factory = {"device": device, "dtype": dtype}
        conv = nn.ConvTranspose2d(
            in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias, dilation, **factory
        )
        bn = nn.BatchNorm2d(out_channels, eps, momentum, affine, track_running_stats, **factory)
        self._set_children(conv, bn, act, negative_slope)

    def _set_children(self, conv, bn, act, negative_slope):
        check_fusable_conv(conv)
        self.add_module("0", conv)
        self.add_module("1", bn)
        self.act = act
        self.negative_slope = float(negative_slope)

    @classmethod
    def from_modules(cls, conv, bn, activation):
        """The fused layer sharing (not copying) the parameters and buffers of the given modules."""
        spec = activation_of(activation) if activation is not None else ("none", 0.0)
        if spec is None:
            raise ValueError(f"activation must be nn.ReLU, nn.LeakyReLU or nn.GLU(dim=1), got {activation!r}")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._set_children(conv, bn, *spec)
        layer.train(bn.training)
        return layer

    @property
    def conv(self):
        return self._modules["0"]

    @property
    def bn(self):
        return self._modules["1"]

    def forward(self, x):
        return deconv_bn_act_forward(x, self.conv, self.bn, self.act, self.negative_slope)

    def extra_repr(self):
        return f"act={self.act!r}" + (f", negative_slope={self.negative_slope}" if self.act == "leaky_relu" else "")


class UpBlock(nn.Module):
    """An up-block: nearest x2 upsample -> 3x3 conv (no bias) -> BatchNorm2d -> activation.

    With ``act="glu"`` (AttnGAN's ``upBlock``) the conv gives 2 * out_channels and GLU halves them; with
    ``act="relu"`` or ``"leaky_relu"`` (StackGAN's ``upBlock``, with ``negative_slope``) it gives out_channels.
    Children and state_dict as ``nn.Sequential(Upsample, conv3x3, BatchNorm2d, activation)``: ``0``..``3``.
    """

    _ACTIVATIONS = ("glu", "relu", "leaky_relu")

    def __init__(
        self,
        in_channels,
        out_channels,
        *,
        act="glu",
        negative_slope=0.2,
        eps=1e-5,
        momentum=0.1,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if act not in self._ACTIVATIONS:
            raise ValueError(f"act must be one of {', '.join(map(repr, self._ACTIVATIONS))}; got {act!r}")
        factory = {"device": device, "dtype": dtype}
        conv_channels = 2 * out_channels if act == "glu" else out_channels
        if act == "glu":
            activation = nn.GLU(dim=1)
        elif act == "relu":
            activation = nn.ReLU(inplace=True)
        else:
            activation = nn.LeakyReLU(negative_slope, inplace=True)
        self.add_module("0", nn.Upsample(scale_factor=2, mode="nearest"))
        self.add_module("1", nn.Conv2d(in_channels, conv_channels, 3, 1, 1, bias=False, **factory))
        self.add_module("2", nn.BatchNorm2d(conv_channels, eps, momentum, **factory))
        self.add_module("3", activation)
        self.act, self.negative_slope = activation_of(activation)

    def forward(self, x):
        upsample, conv, bn, _ = self._modules.values()
        return upsample_conv_bn_act_forward(x, upsample, conv, bn, self.act, self.negative_slope)

    def extra_repr(self):
        return f"act={self.act!r}" + (f", negative_slope={self.negative_slope}" if self.act == "leaky_relu" else "")
