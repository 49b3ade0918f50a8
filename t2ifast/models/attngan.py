"""AttnGAN (Xu et al., 2018): a multi-stage generator whose later stages attend to the caption's words, and its
per-stage discriminators.

G(z, sentence ē, words e, pad_mask):
- Conditioning Augmentation on ē gives c (and μ, log σ² for the KL term);
- F0 (``h_net1``): [c; z] -> linear -> BatchNorm1d -> GLU -> 16·ngf × 4 × 4 -> four up-blocks -> h0 (ngf × 64 × 64);
- stage i >= 1 (``h_net2``, ``h_net3``): the word context c_i = F_attn(h_{i-1}, e) (each region attends over the
  valid words), [h_{i-1}; c_i] -> residual blocks -> up-block -> h_i at twice the size;
- each h_i -> 3×3 conv -> tanh (``img_net1..3``): images of 64, 128, 256 pixels.

The module names follow AttnGAN's G_NET (``ca_net``, ``h_net1`` with ``fc`` and ``upsample1..4``, ``h_net2/3``
with ``att.conv_context``, ``residual.<k>.block`` and ``upsample``, ``img_net1..3.img``), so the state_dict keys
of a released AttnGAN generator match these. The up-blocks run the fused ``upsample_conv_bn_act`` op, the word
attention the fused ``word_region_attention`` op and the residual blocks' BatchNorm(+GLU) the fused ``bn_act``.
"""

from typing import NamedTuple

import torch
from torch import nn

from t2ifast import ops
from t2ifast.models.conditioning_augmentation import ConditioningAugmentation
from t2ifast.models.matching_aware_discriminator import MatchingAwareDiscriminator
from t2ifast.nn import UpBlock, WordRegionAttention
from t2ifast.nn.conv_bn_act import batch_norm_arguments

STAGES = (1, 2, 3)


def _check_positive(**values):
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_stages(stages):
    if isinstance(stages, bool) or stages not in STAGES:
        raise ValueError(f"stages must be 1, 2 or 3 (images of 64, 128, 256 pixels), got {stages!r}")


def stage_sizes(stages):
    """The image sizes of a model with this many stages: (64,), (64, 128) or (64, 128, 256)."""
    _check_stages(stages)
    return tuple(64 * 2**i for i in range(stages))


def pad_mask_of(lengths, steps):
    """``[B, steps]`` bool, True at the padded positions t >= lengths[b] (AttnGAN's ``captions == 0`` mask)."""
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be [B], got shape {tuple(lengths.shape)}")
    return torch.arange(steps, device=lengths.device)[None, :] >= lengths[:, None]


def conv3x3(in_channels, out_channels):
    """AttnGAN's conv3x3: stride 1, padding 1, no bias."""
    return nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)


def _bn_act(y, bn, act):
    training, running_mean, running_var, momentum = batch_norm_arguments(bn)
    return ops.bn_act(
        y, bn.weight, bn.bias, running_mean, running_var, training=training, momentum=momentum, eps=bn.eps, act=act
    )


class AttnGANOutput(NamedTuple):
    """images: one ``[B, 3, 64·2^i, 64·2^i]`` per stage; attention: one ``[B, T, H, W]`` per stage i >= 1 (the
    word attention of stage i over the regions of h_{i-1}: H = W = 64·2^(i-1)), empty when not asked for;
    mu, logvar: the Conditioning Augmentation's Gaussian (for the KL term)."""

    images: list
    attention: list
    mu: torch.Tensor
    logvar: torch.Tensor


class ResBlock(nn.Module):
    """AttnGAN's ResBlock: x + BN(conv3x3(GLU(BN(conv3x3(x))))), children ``block.0..4`` as in AttnGAN
    (conv 2C, BatchNorm2d, GLU, conv C, BatchNorm2d); each BatchNorm(+GLU) runs the fused ``bn_act``."""

    def __init__(self, channels):
        super().__init__()
        self.block = nn.Sequential(
            conv3x3(channels, 2 * channels),
            nn.BatchNorm2d(2 * channels),
            nn.GLU(dim=1),
            conv3x3(channels, channels),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        conv1, bn1, _, conv2, bn2 = self.block
        out = _bn_act(conv1(x), bn1, "glu")
        return _bn_act(conv2(out), bn2, "none") + x


class InitStage(nn.Module):
    """F0, AttnGAN's INIT_STAGE_G: [c; z] -> 16·ngf × 4 × 4 -> four up-blocks -> ngf × 64 × 64."""

    def __init__(self, in_dim, channels):
        super().__init__()
        self.channels = channels  # 16·ngf
        self.fc = nn.Sequential(
            nn.Linear(in_dim, channels * 4 * 4 * 2, bias=False), nn.BatchNorm1d(channels * 4 * 4 * 2), nn.GLU(dim=1)
        )
        self.upsample1 = UpBlock(channels, channels // 2)
        self.upsample2 = UpBlock(channels // 2, channels // 4)
        self.upsample3 = UpBlock(channels // 4, channels // 8)
        self.upsample4 = UpBlock(channels // 8, channels // 16)

    def forward(self, z, c):
        h = self.fc(torch.cat([c, z], dim=1)).view(-1, self.channels, 4, 4)
        return self.upsample4(self.upsample3(self.upsample2(self.upsample1(h))))


class NextStage(nn.Module):
    """AttnGAN's NEXT_STAGE_G: word context from h and the words, [h; context] -> residual blocks -> up-block."""

    def __init__(self, ngf, word_dim, residual_blocks):
        super().__init__()
        self.att = WordRegionAttention(ngf, word_dim)
        self.residual = nn.Sequential(*(ResBlock(2 * ngf) for _ in range(residual_blocks)))
        self.upsample = UpBlock(2 * ngf, ngf)

    def forward(self, h, words, pad_mask, *, return_attn=True):
        context, attn = self.att(h, words, pad_mask, return_attn=return_attn)
        return self.upsample(self.residual(torch.cat([h, context], dim=1))), attn


class ImageHead(nn.Module):
    """AttnGAN's GET_IMAGE_G: conv3x3(ngf -> 3) -> tanh."""

    def __init__(self, ngf):
        super().__init__()
        self.img = nn.Sequential(conv3x3(ngf, 3), nn.Tanh())

    def forward(self, h):
        return self.img(h)


class AttnGANGenerator(nn.Module):
    """G(z [B, z_dim], sentence [B, D], words [B, D, T], pad_mask [B, T]) -> AttnGANOutput.

    Args:
        word_dim: D, the size of the DAMSM word and sentence features.
        z_dim: size of the noise vector (100 in AttnGAN).
        condition_dim: size of the Conditioning Augmentation sample c (AttnGAN's CONDITION_DIM, 100).
        ngf: the hidden width of every stage (AttnGAN's GF_DIM, 32 for birds); F0 starts at 16·ngf × 4 × 4.
        stages: 1, 2 or 3 (AttnGAN's BRANCH_NUM): images of 64, 128 and 256 pixels.
        residual_blocks: residual blocks per later stage (AttnGAN's R_NUM, 2).

    pad_mask is bool, True at the padded word positions (``pad_mask_of(lengths, T)``), or None (no padding).
    ``return_attention=False`` leaves the attention maps out (the fused attention never writes them).
    """

    def __init__(self, word_dim, *, z_dim=100, condition_dim=100, ngf=32, stages=3, residual_blocks=2):
        super().__init__()
        _check_positive(
            word_dim=word_dim, z_dim=z_dim, condition_dim=condition_dim, ngf=ngf, residual_blocks=residual_blocks
        )
        _check_stages(stages)
        self.word_dim, self.z_dim, self.condition_dim = word_dim, z_dim, condition_dim
        self.ngf, self.stages, self.residual_blocks = ngf, stages, residual_blocks
        self.ca_net = ConditioningAugmentation(word_dim, condition_dim)
        self.h_net1 = InitStage(z_dim + condition_dim, 16 * ngf)
        self.img_net1 = ImageHead(ngf)
        for i in range(2, stages + 1):
            setattr(self, f"h_net{i}", NextStage(ngf, word_dim, residual_blocks))
            setattr(self, f"img_net{i}", ImageHead(ngf))

    @property
    def image_sizes(self):
        return stage_sizes(self.stages)

    def extra_repr(self):
        return (
            f"word_dim={self.word_dim}, z_dim={self.z_dim}, condition_dim={self.condition_dim}, ngf={self.ngf}, "
            f"stages={self.stages}, residual_blocks={self.residual_blocks}"
        )

    def _check_inputs(self, z, sentence, words, pad_mask):
        for name, value in (("z", z), ("sentence", sentence), ("words", words)):
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise TypeError(f"{name} must be a floating-point torch.Tensor")
        if z.dim() != 2 or z.shape[1] != self.z_dim or z.shape[0] == 0:
            raise ValueError(f"z must be [B, z_dim={self.z_dim}], got shape {tuple(z.shape)}")
        batch = z.shape[0]
        if sentence.shape != (batch, self.word_dim):
            raise ValueError(f"sentence must be [B={batch}, D={self.word_dim}], got shape {tuple(sentence.shape)}")
        if words.dim() != 3 or words.shape[:2] != (batch, self.word_dim) or words.shape[2] == 0:
            raise ValueError(f"words must be [B={batch}, D={self.word_dim}, T], got shape {tuple(words.shape)}")
        if pad_mask is not None:
            if not isinstance(pad_mask, torch.Tensor) or pad_mask.dtype != torch.bool:
                raise TypeError("pad_mask must be a bool torch.Tensor [B, T] (True = padding) or None")
            if pad_mask.shape != (batch, words.shape[2]):
                raise ValueError(f"pad_mask must be [B={batch}, T={words.shape[2]}], got shape {tuple(pad_mask.shape)}")

    def forward(self, z, sentence, words, pad_mask=None, *, return_attention=True):
        self._check_inputs(z, sentence, words, pad_mask)
        c, mu, logvar = self.ca_net(sentence)
        h = self.h_net1(z, c)
        images, attention = [self.img_net1(h)], []
        for i in range(2, self.stages + 1):
            h, attn = getattr(self, f"h_net{i}")(h, words, pad_mask, return_attn=return_attention)
            images.append(getattr(self, f"img_net{i}")(h))
            if return_attention:
                attention.append(attn)
        return AttnGANOutput(images, attention, mu, logvar)


class AttnGANDiscriminators(nn.ModuleList):
    """One matching-aware discriminator per stage, at 64·2^i pixels, each with an unconditional logit too
    (AttnGAN's D_NET64/128/256 have both heads). ``discriminators[i]`` scores the stage-i images."""

    def __init__(self, sentence_dim, projection_dim, ndf, stages):
        _check_positive(sentence_dim=sentence_dim, projection_dim=projection_dim, ndf=ndf)
        super().__init__(
            MatchingAwareDiscriminator(sentence_dim, projection_dim, ndf, image_size=size, unconditional=True)
            for size in stage_sizes(stages)
        )

    @property
    def image_sizes(self):
        return tuple(d.image_size for d in self)


__all__ = [
    "AttnGANDiscriminators",
    "AttnGANGenerator",
    "AttnGANOutput",
    "ResBlock",
    "pad_mask_of",
    "stage_sizes",
]
