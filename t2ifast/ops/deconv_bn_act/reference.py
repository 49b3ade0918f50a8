"""Plain-PyTorch BatchNorm + activation, transposed-conv block and up-block: the definitions the fused
kernels are tested against, written as the nn modules would compute them."""

import torch.nn.functional as F

ACTIVATIONS = ("relu", "leaky_relu", "glu", "none")


def activation(z, act, negative_slope):
    """act(z); GLU splits the channels (dim 1) in half: z[:, :C/2] * sigmoid(z[:, C/2:])."""
    if act == "relu":
        return F.relu(z)
    if act == "leaky_relu":
        return F.leaky_relu(z, negative_slope)
    if act == "glu":
        return F.glu(z, dim=1)
    return z


def bn_act_reference(y, weight, bias, running_mean, running_var, *, training, momentum, eps, act, negative_slope):
    """act(BatchNorm(y)); in training the batch statistics are used and the running ones updated in place."""
    z = F.batch_norm(y, running_mean, running_var, weight, bias, training=training, momentum=momentum, eps=eps)
    return activation(z, act, negative_slope)


def deconv_bn_act_reference(
    x,
    weight,
    bias,
    bn_weight,
    bn_bias,
    running_mean,
    running_var,
    *,
    conv_args,
    training,
    momentum,
    eps,
    act,
    negative_slope,
):
    """act(BatchNorm(conv_transpose2d(x))): the nn.ConvTranspose2d -> nn.BatchNorm2d -> activation sequence."""
    y = F.conv_transpose2d(x, weight, bias, **conv_args)
    return bn_act_reference(
        y,
        bn_weight,
        bn_bias,
        running_mean,
        running_var,
        training=training,
        momentum=momentum,
        eps=eps,
        act=act,
        negative_slope=negative_slope,
    )


def upsample_conv_bn_act_reference(
    x,
    weight,
    bias,
    bn_weight,
    bn_bias,
    running_mean,
    running_var,
    *,
    scale_factor,
    conv_args,
    training,
    momentum,
    eps,
    act,
    negative_slope,
):
    """AttnGAN's up-block: nearest upsample -> conv2d -> BatchNorm -> activation (GLU in AttnGAN)."""
    y = F.conv2d(F.interpolate(x, scale_factor=scale_factor, mode="nearest"), weight, bias, **conv_args)
    return bn_act_reference(
        y,
        bn_weight,
        bn_bias,
        running_mean,
        running_var,
        training=training,
        momentum=momentum,
        eps=eps,
        act=act,
        negative_slope=negative_slope,
    )
