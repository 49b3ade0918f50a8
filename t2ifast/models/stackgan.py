"""StackGAN's generators (Zhang et al., 2017), with the layout of the authors' StackGAN-Pytorch code.

Stage I: Conditioning Augmentation c ~ N(μ(φ), σ²(φ)), (c, z) -> fc -> 4×4 -> four up-blocks -> 64×64 image.
Stage II: the Stage-I image is encoded down to 16×16, joined with its own CA sample c, refined by residual
blocks and grown by four up-blocks to 256×256. Every up-block (nearest ×2 -> 3×3 conv -> BatchNorm -> ReLU)
is a fused `t2ifast.nn.UpBlock(act="relu")`. Both return (image, μ, log σ²): the KL term and the
discriminator's condition (μ, detached) come from the same CA.
"""

from itertools import pairwise
from typing import NamedTuple

import torch
from torch import nn

from t2ifast.models.conditioning_augmentation import ConditioningAugmentation
from t2ifast.nn import UpBlock


class StackGANOutput(NamedTuple):
    """A generator's image [B, 3, S, S] in [-1, 1] and its CA's μ and log σ² [B, condition_dim]."""

    image: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor


def _check_positive(**values):
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_embedding(embedding, batch, embedding_dim):
    if embedding.dim() != 2 or embedding.shape != (batch, embedding_dim):
        raise ValueError(
            f"embedding must be [B={batch}, embedding_dim={embedding_dim}], got shape {tuple(embedding.shape)}"
        )


def _conv3x3(c_in, c_out):
    return nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)


def _to_image(channels):
    return nn.Sequential(_conv3x3(channels, 3), nn.Tanh())


class StackGANStage1Generator(nn.Module):
    """G1(z [B, z_dim], embedding [B, embedding_dim]) -> StackGANOutput(image [B, 3, 64, 64], μ, log σ²).

    Args:
        embedding_dim: size of the sentence embedding φ(t).
        z_dim: size of the noise vector (100 in the paper).
        condition_dim: size of the CA sample c (128 in the paper).
        ngf: width of the last up-block; the 4×4 start has 16·ngf channels.
    """

    def __init__(self, embedding_dim, *, z_dim=100, condition_dim=128, ngf=64):
        super().__init__()
        _check_positive(embedding_dim=embedding_dim, z_dim=z_dim, condition_dim=condition_dim, ngf=ngf)
        self.embedding_dim, self.z_dim, self.ngf = embedding_dim, z_dim, ngf
        self.ca_net = ConditioningAugmentation(embedding_dim, condition_dim)
        self.fc = nn.Sequential(
            nn.Linear(condition_dim + z_dim, 16 * ngf * 4 * 4, bias=False),
            nn.BatchNorm1d(16 * ngf * 4 * 4),
            nn.ReLU(inplace=True),
        )
        widths = (16 * ngf, 8 * ngf, 4 * ngf, 2 * ngf, ngf)  # 4 -> 8 -> 16 -> 32 -> 64 pixels
        self.upsample = nn.Sequential(*(UpBlock(a, b, act="relu") for a, b in pairwise(widths)))
        self.image = _to_image(ngf)

    def forward(self, z, embedding):
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [B, z_dim={self.z_dim}], got shape {tuple(z.shape)}")
        _check_embedding(embedding, z.shape[0], self.embedding_dim)
        c, mu, logvar = self.ca_net(embedding)
        h = self.fc(torch.cat([c, z], dim=1)).view(-1, 16 * self.ngf, 4, 4)
        return StackGANOutput(self.image(self.upsample(h)), mu, logvar)


class _ResidualBlock(nn.Module):
    """x -> ReLU(x + BN(conv3x3(ReLU(BN(conv3x3(x))))))."""

    def __init__(self, channels):
        super().__init__()
        self.block = nn.Sequential(
            _conv3x3(channels, channels),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            _conv3x3(channels, channels),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        return torch.relu(x + self.block(x))


class StackGANStage2Generator(nn.Module):
    """G2(stage1_image [B, 3, 64, 64], embedding [B, embedding_dim]) -> StackGANOutput(image [B, 3, 256, 256], μ,
    log σ²).

    Args:
        embedding_dim: size of the sentence embedding φ(t).
        condition_dim: size of this stage's CA sample c (128 in the paper).
        ngf: width of the encoder's first conv; the 16×16 features have 4·ngf channels.
        residual_blocks: residual blocks at 16×16 (4 in the paper).

    The join is StackGAN's: a 3×3 conv (+ BN + ReLU) over [features; c tiled over 16×16]. The tile is
    materialised here, unlike in the discriminator's 1×1 join: with zero padding a 3×3 conv of a tiled vector is
    not a per-sample bias (the border pixels see fewer taps), so the tile-free form would need a per-position
    correction; the tile is only condition_dim × 16 × 16 per sample, negligible beside the 256×256 up-blocks,
    and keeping the exact 3×3 join keeps StackGAN's architecture and its `hr_joint` weight layout.
    """

    def __init__(self, embedding_dim, *, condition_dim=128, ngf=64, residual_blocks=2):
        super().__init__()
        _check_positive(
            embedding_dim=embedding_dim, condition_dim=condition_dim, ngf=ngf, residual_blocks=residual_blocks
        )
        self.embedding_dim = embedding_dim
        self.ca_net = ConditioningAugmentation(embedding_dim, condition_dim)
        self.encoder = nn.Sequential(
            _conv3x3(3, ngf),
            nn.ReLU(inplace=True),
            nn.Conv2d(ngf, 2 * ngf, 4, 2, 1, bias=False),  # 32×32
            nn.BatchNorm2d(2 * ngf),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * ngf, 4 * ngf, 4, 2, 1, bias=False),  # 16×16
            nn.BatchNorm2d(4 * ngf),
            nn.ReLU(inplace=True),
        )
        self.join = nn.Sequential(_conv3x3(4 * ngf + condition_dim, 4 * ngf), nn.BatchNorm2d(4 * ngf), nn.ReLU(True))
        self.residual = nn.Sequential(*(_ResidualBlock(4 * ngf) for _ in range(residual_blocks)))
        widths = (4 * ngf, 2 * ngf, ngf, max(ngf // 2, 1), max(ngf // 4, 1))  # 16 -> 32 -> 64 -> 128 -> 256 pixels
        self.upsample = nn.Sequential(*(UpBlock(a, b, act="relu") for a, b in pairwise(widths)))
        self.image = _to_image(widths[-1])

    def forward(self, stage1_image, embedding):
        if stage1_image.dim() != 4 or stage1_image.shape[1:] != (3, 64, 64):
            raise ValueError(f"stage1_image must be [B, 3, 64, 64], got shape {tuple(stage1_image.shape)}")
        _check_embedding(embedding, stage1_image.shape[0], self.embedding_dim)
        c, mu, logvar = self.ca_net(embedding)
        features = self.encoder(stage1_image)
        tiled = c[:, :, None, None].expand(-1, -1, *features.shape[2:])
        h = self.residual(self.join(torch.cat([features, tiled], dim=1)))
        return StackGANOutput(self.image(self.upsample(h)), mu, logvar)


class StackGAN(nn.Module):
    """Both stages as one sampler: (z, embedding) -> Stage II's StackGANOutput (256×256) from Stage I's image."""

    def __init__(self, stage1, stage2):
        super().__init__()
        self.stage1, self.stage2 = stage1, stage2

    def forward(self, z, embedding):
        return self.stage2(self.stage1(z, embedding).image, embedding)


__all__ = ["StackGAN", "StackGANOutput", "StackGANStage1Generator", "StackGANStage2Generator"]
