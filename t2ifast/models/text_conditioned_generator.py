"""The generator of Reed et al. (2016) and its style encoder, at 64×64.

G(z, φ(t)): the sentence embedding is projected (linear + LeakyReLU) to `projection_dim`, joined to the
noise z, and a DCGAN stack of transposed convolutions grows it 1 → 4 → 8 → 16 → 32 → 64 pixels, each layer
but the last followed by BatchNorm and ReLU — every such layer is a fused `DeconvBNAct` — and the last by
tanh. S(x) is a convolutional net that recovers z from an image; style transfer is G(S(x), φ(t)).
"""

import torch
from torch import nn

from t2ifast.nn import DeconvBNAct


def _check_positive(**values):
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class TextConditionedGenerator(nn.Module):
    """G(z [B, z_dim], embedding [B, embedding_dim]) -> image [B, 3, 64, 64] in [-1, 1].

    Args:
        embedding_dim: size of the sentence embedding φ(t).
        z_dim: size of the noise vector (100 in the paper).
        projection_dim: size of the projected text joined to z (128 in the paper).
        ngf: width of the last hidden layer; the first has 8·ngf channels at 4×4.
    """

    def __init__(self, embedding_dim, *, z_dim=100, projection_dim=128, ngf=64):
        super().__init__()
        _check_positive(embedding_dim=embedding_dim, z_dim=z_dim, projection_dim=projection_dim, ngf=ngf)
        self.embedding_dim, self.z_dim = embedding_dim, z_dim
        self.project_text = nn.Sequential(nn.Linear(embedding_dim, projection_dim), nn.LeakyReLU(0.2, inplace=True))
        self.net = nn.Sequential(
            DeconvBNAct(z_dim + projection_dim, 8 * ngf, 4, 1, 0),  # 4×4
            DeconvBNAct(8 * ngf, 4 * ngf, 4, 2, 1),  # 8×8
            DeconvBNAct(4 * ngf, 2 * ngf, 4, 2, 1),  # 16×16
            DeconvBNAct(2 * ngf, ngf, 4, 2, 1),  # 32×32
            nn.ConvTranspose2d(ngf, 3, 4, 2, 1),  # 64×64
            nn.Tanh(),
        )

    def forward(self, z, embedding):
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [B, z_dim={self.z_dim}], got shape {tuple(z.shape)}")
        if embedding.shape != (z.shape[0], self.embedding_dim):
            raise ValueError(
                f"embedding must be [B={z.shape[0]}, embedding_dim={self.embedding_dim}], got {tuple(embedding.shape)}"
            )
        joined = torch.cat([z, self.project_text(embedding)], dim=1)
        return self.net(joined[:, :, None, None])


class StyleEncoder(nn.Module):
    """S(image [B, 3, 64, 64]) -> z [B, z_dim]: trained with ‖z − S(G(z, φ(t)))‖² on a trained, frozen G, so
    that S recovers what the text does not say (pose, placement, background) from any image."""

    def __init__(self, *, z_dim=100, ndf=64):
        super().__init__()
        _check_positive(z_dim=z_dim, ndf=ndf)
        layers, channels = [], 3
        for i, width in enumerate((ndf, 2 * ndf, 4 * ndf, 8 * ndf)):  # 64 → 32 → 16 → 8 → 4
            layers.append(nn.Conv2d(channels, width, 4, 2, 1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            channels = width
        self.trunk = nn.Sequential(*layers)
        self.to_z = nn.Linear(channels * 16, z_dim)

    def forward(self, image):
        if image.dim() != 4 or image.shape[1:] != (3, 64, 64):
            raise ValueError(f"image must be [B, 3, 64, 64], got shape {tuple(image.shape)}")
        return self.to_z(self.trunk(image).flatten(1))
