"""Conditioning Augmentation: shapes, the reparameterisation, and the KL term against its closed form."""

import pytest
import torch

from t2ifast.models.conditioning_augmentation import ConditioningAugmentation, kl_loss


def test_sample_follows_mu_and_sigma():
    torch.manual_seed(0)
    ca = ConditioningAugmentation(12, 5)
    embedding = torch.randn(3, 12)
    c, mu, logvar = ca(embedding)
    assert c.shape == mu.shape == logvar.shape == (3, 5)
    # many samples of one embedding: their mean is μ and their std σ
    many = torch.stack([ca(embedding)[0] for _ in range(4000)])
    torch.testing.assert_close(many.mean(0), mu, atol=0.08, rtol=0)
    torch.testing.assert_close(many.std(0), torch.exp(0.5 * logvar), atol=0.08, rtol=0.05)
    ca.eval()
    torch.testing.assert_close(ca(embedding)[0], mu)
    assert not torch.equal(ca(embedding, sample=True)[0], mu)


def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(kl_loss(mu, logvar), torch.distributions.kl_divergence(q, p).mean())


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="condition_dim"):
        ConditioningAugmentation(8, 0)
    with pytest.raises(ValueError, match=r"embedding must be \[B, 8\]"):
        ConditioningAugmentation(8, 2)(torch.randn(3, 7))
