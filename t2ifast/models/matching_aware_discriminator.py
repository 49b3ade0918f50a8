"""The GAN-CLS discriminator of Reed et al. (2016), 64×64, scoring all three pair groups of a step at once.

A plain conditional discriminator is called three times per step: D(real, right), D(real, wrong) and
D(fake, right). Its image trunk depends only on the image, so here it runs twice (real, fake), and the
text-conditioned head runs once for the three groups together:

- the projected text is never tiled over the 4×4 grid: the 1×1 convolution of [features; tiled text]
  equals the 1×1 convolution of the features plus a per-sample bias W_text·text, added by broadcasting;
- the head's BatchNorm normalises each pair group with that group's own batch statistics (and updates
  the running statistics group after group), so in training every score equals what three separate
  calls give. Only the trunk's running statistics differ: they see the real batch once, not twice.
"""

import torch
import torch.nn.functional as F
from torch import nn


def _down(c_in, c_out, batch_norm=True):
    layers = [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return layers


class MatchingAwareDiscriminator(nn.Module):
    """D(image 3×64×64, sentence embedding) -> logit.

    Args:
        embedding_dim: size of the sentence embedding φ(t).
        projection_dim: size of the projected text joined to the 4×4 features (128 in the paper).
        ndf: width of the first convolution; the trunk ends with 8·ndf channels at 4×4.
    """

    def __init__(self, embedding_dim, projection_dim=128, ndf=64):
        super().__init__()
        self.trunk = nn.Sequential(
            *_down(3, ndf, batch_norm=False), *_down(ndf, 2 * ndf), *_down(2 * ndf, 4 * ndf), *_down(4 * ndf, 8 * ndf)
        )
        self.project_text = nn.Sequential(nn.Linear(embedding_dim, projection_dim), nn.LeakyReLU(0.2, inplace=True))
        self.join = nn.Conv2d(8 * ndf + projection_dim, 8 * ndf, 1, bias=False)
        self.join_norm = nn.BatchNorm2d(8 * ndf)
        self.score = nn.Conv2d(8 * ndf, 1, 4)
        self.trunk_channels = 8 * ndf

    def _joined(self, features, text):
        """join(features ⊕ tile(project(text))) without the tile: [N, 8ndf, 4, 4]."""
        weight_features, weight_text = self.join.weight.split([self.trunk_channels, text.shape[1]], dim=1)
        per_sample = text @ weight_text.flatten(1).t()  # [N, 8ndf]: the tiled text's contribution
        return F.conv2d(features, weight_features) + per_sample[:, :, None, None]

    def _head(self, joined):
        return self.score(F.leaky_relu(self.join_norm(joined), 0.2)).flatten()

    def forward(self, image, embedding):
        """The plain conditional discriminator: one logit per (image, text) pair."""
        return self._head(self._joined(self.trunk(image), self.project_text(embedding)))

    def score_pairs(self, real, fake, right, wrong=None):
        """Logits (s_real, s_wrong, s_fake) of (real, right), (real, wrong) and (fake, right) in two trunk
        passes. With `wrong=None` (a plain conditional GAN) s_wrong is empty."""
        real_features, fake_features = self.trunk(real), self.trunk(fake)
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
        return s_real, s_wrong, s_fake
