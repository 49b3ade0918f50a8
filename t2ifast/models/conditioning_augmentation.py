"""Conditioning Augmentation (StackGAN, also AttnGAN's first stage): a sentence embedding φ(t) becomes a Gaussian
N(μ(φ), diag σ²(φ)) and the generator is conditioned on a sample c = μ + σ⊙ε of it, so that a few thousand
captions cover a smooth conditioning manifold; a KL term keeps that Gaussian close to N(0, I).
"""

import torch
from torch import nn


class ConditioningAugmentation(nn.Module):
    """φ(t) [B, embedding_dim] -> (c, μ, log σ²), each [B, condition_dim].

    The layer is AttnGAN's CA_NET (a linear layer to 4·condition_dim, then GLU), so its state_dict (``fc``)
    loads unchanged. In eval mode c = μ unless ``sample=True`` is given.
    """

    def __init__(self, embedding_dim, condition_dim):
        super().__init__()
        for name, value in (("embedding_dim", embedding_dim), ("condition_dim", condition_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.embedding_dim, self.condition_dim = embedding_dim, condition_dim
        self.fc = nn.Linear(embedding_dim, 4 * condition_dim)

    def forward(self, embedding, *, sample=None):
        if embedding.dim() != 2 or embedding.shape[1] != self.embedding_dim:
            raise ValueError(f"embedding must be [B, {self.embedding_dim}], got shape {tuple(embedding.shape)}")
        mu, logvar = nn.functional.glu(self.fc(embedding), dim=1).chunk(2, dim=1)
        if sample is None:
            sample = self.training
        c = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return c, mu, logvar


def kl_loss(mu, logvar):
    """KL(N(μ, σ²) ‖ N(0, I)), averaged over the batch and the dimensions (as StackGAN and AttnGAN do)."""
    return (-0.5 * (1 + logvar - mu.square() - logvar.exp())).mean()


__all__ = ["ConditioningAugmentation", "kl_loss"]
