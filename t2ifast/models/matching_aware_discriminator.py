"""The matching-aware discriminator of Reed et al. (2016), scoring all three pair groups of a step at once, at
64×64 and — for StackGAN's and AttnGAN's later stages — at 128×128 and 256×256.

A plain conditional discriminator is called three times per step: D(real, right), D(real, wrong) and
D(fake, right). Its image trunk depends only on the image, so here it runs twice (real, fake), and the
text-conditioned head runs once for the three groups together:

- the projected text is never tiled over the 4×4 grid: the 1×1 convolution of [features; tiled text]
  equals the 1×1 convolution of the features plus a per-sample bias W_text·text, added by broadcasting;
- the head's BatchNorm normalises each pair group with that group's own batch statistics (and updates
  the running statistics group after group), so in training every score equals what three separate
  calls give. Only the trunk's running statistics differ: they see the real batch once, not twice.

StackGAN and AttnGAN also give each stage's D an unconditional logit ("is this a real image?") on the same
trunk features (`unconditional=True`); it is computed in the same pass.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class PairScores(NamedTuple):
    """Logits of one discriminator step: (real, right), (real, wrong) — empty without wrong text — and
    (fake, right); with an unconditional head also the real and fake images' unconditional logits (else None)."""

    real: torch.Tensor
    wrong: torch.Tensor
    fake: torch.Tensor
    real_unconditional: torch.Tensor | None = None
    fake_unconditional: torch.Tensor | None = None


class ImageScores(NamedTuple):
    """Logits of (image, text) pairs: conditional, and unconditional (None without an unconditional head)."""

    conditional: torch.Tensor
    unconditional: torch.Tensor | None = None


def _down(c_in, c_out, batch_norm=True):
    layers = [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return layers


def _trunk(image_size, ndf):
    """Strided 4×4 convolutions from image_size down to 4×4, doubling the width up to 8·ndf."""
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two of at least 8, got {image_size!r}")
    layers, channels = _down(3, ndf, batch_norm=False), ndf
    size = image_size // 2
    while size > 4:
        width = min(2 * channels, 8 * ndf)
        layers += _down(channels, width)
        channels, size = width, size // 2
    return nn.Sequential(*layers), channels


class MatchingAwareDiscriminator(nn.Module):
    """D(image [N, 3, S, S], sentence embedding) -> logit.

    Args:
        embedding_dim: size of the sentence embedding φ(t).
        projection_dim: size of the projected text joined to the 4×4 features (128 in the paper).
        ndf: width of the first convolution; the trunk ends at 4×4 with at most 8·ndf channels.
        image_size: S, a power of two (64 in the paper; 128 and 256 for later StackGAN/AttnGAN stages).
        unconditional: also give an unconditional logit per image (StackGAN, AttnGAN).
    """

    def __init__(self, embedding_dim, projection_dim=128, ndf=64, *, image_size=64, unconditional=False):
        super().__init__()
        self.image_size = image_size
        self.trunk, self.trunk_channels = _trunk(image_size, ndf)
        self.project_text = nn.Sequential(nn.Linear(embedding_dim, projection_dim), nn.LeakyReLU(0.2, inplace=True))
        self.join = nn.Conv2d(self.trunk_channels + projection_dim, self.trunk_channels, 1, bias=False)
        self.join_norm = nn.BatchNorm2d(self.trunk_channels)
        self.score = nn.Conv2d(self.trunk_channels, 1, 4)
        self.score_unconditional = nn.Conv2d(self.trunk_channels, 1, 4) if unconditional else None

    def _features(self, image):
        if image.dim() != 4 or image.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(
                f"image must be [N, 3, {self.image_size}, {self.image_size}], got shape {tuple(image.shape)}"
            )
        return self.trunk(image)

    def _joined(self, features, text):
        """join(features ⊕ tile(project(text))) without the tile: [N, C, 4, 4]."""
        weight_features, weight_text = self.join.weight.split([self.trunk_channels, text.shape[1]], dim=1)
        per_sample = text @ weight_text.flatten(1).t()  # [N, C]: the tiled text's contribution
        return F.conv2d(features, weight_features) + per_sample[:, :, None, None]

    def _unconditional(self, features):
        return None if self.score_unconditional is None else self.score_unconditional(features).flatten()

    def forward(self, image, embedding):
        """The plain conditional discriminator: one logit per (image, text) pair."""
        return self.score_images(image, embedding).conditional

    def score_images(self, image, embedding):
        """ImageScores(conditional, unconditional) of (image, text) pairs from one trunk pass."""
        features = self._features(image)
        joined = self._joined(features, self.project_text(embedding))
        conditional = self.score(F.leaky_relu(self.join_norm(joined), 0.2)).flatten()
        return ImageScores(conditional, self._unconditional(features))

    def score_pairs(self, real, fake, right, wrong=None):
        """PairScores of (real, right), (real, wrong) and (fake, right) in two trunk passes. With `wrong=None`
        (a plain conditional GAN) the wrong scores are empty."""
        real_features, fake_features = self._features(real), self._features(fake)
        right_text = self.project_text(right)
        groups = [(real_features, right_text)]
        if wrong is not None:
            groups.append((real_features, self.project_text(wrong)))
        groups.append((fake_features, right_text))
        joined = [self._joined(features, text) for features, text in groups]
        # BatchNorm per group (its own batch statistics, running statistics updated group after group),
        # then one LeakyReLU and one scoring convolution for all groups.
        normed = torch.cat([self.join_norm(x) for x in joined])
        logits = self.score(F.leaky_relu(normed, 0.2)).flatten().split([len(x) for x in joined])
        s_real, s_fake = logits[0], logits[-1]
        s_wrong = logits[1] if wrong is not None else s_real.new_empty(0)
        return PairScores(
            s_real, s_wrong, s_fake, self._unconditional(real_features), self._unconditional(fake_features)
        )
