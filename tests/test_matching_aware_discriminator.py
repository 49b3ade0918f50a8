"""The shared-trunk, untiled scoring of the three pair groups equals three separate discriminator calls."""

import copy

import pytest
import torch

from t2ifast.models.matching_aware_discriminator import MatchingAwareDiscriminator


def _inputs(batch=5, embedding_dim=24):
    real, fake = torch.randn(batch, 3, 64, 64), torch.randn(batch, 3, 64, 64, requires_grad=True)
    right, wrong = torch.randn(batch, embedding_dim), torch.randn(batch, embedding_dim)
    return real, fake, right, wrong


@pytest.mark.parametrize("with_wrong", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_score_pairs_equals_separate_calls(with_wrong, training):
    torch.manual_seed(int.from_bytes(__import__("os").urandom(2), "little"))
    fused = MatchingAwareDiscriminator(embedding_dim=24, projection_dim=16, ndf=8).double()
    separate = copy.deepcopy(fused)
    fused.train(training)
    separate.train(training)
    real, fake, right, wrong = (x.double().detach().requires_grad_(True) for x in _inputs())
    wrong_arg = wrong if with_wrong else None

    s_real, s_wrong, s_fake = fused.score_pairs(real, fake, right, wrong_arg)
    # in the order a training step calls them, which the running statistics see
    expected = [separate(real, right), *([separate(real, wrong)] if with_wrong else []), separate(fake, right)]
    got = [s_real, s_wrong, s_fake] if with_wrong else [s_real, s_fake]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    if not with_wrong:
        assert s_wrong.numel() == 0

    # gradients of a loss over all scores, for every parameter and for the inputs
    weights = [torch.randn_like(e) for e in expected]
    loss_fused = sum((w * g).sum() for w, g in zip(weights, got, strict=True))
    loss_separate = sum((w * e).sum() for w, e in zip(weights, expected, strict=True))
    inputs = [real, fake, right] + ([wrong] if with_wrong else [])
    grads_fused = torch.autograd.grad(loss_fused, [*fused.parameters(), *inputs])
    grads_separate = torch.autograd.grad(loss_separate, [*separate.parameters(), *inputs])
    for g, e in zip(grads_fused, grads_separate, strict=True):
        torch.testing.assert_close(g, e)
    # the head's running statistics went through the same updates, group after group
    torch.testing.assert_close(fused.join_norm.running_mean, separate.join_norm.running_mean)
    torch.testing.assert_close(fused.join_norm.running_var, separate.join_norm.running_var)


def test_state_dict_is_the_plain_layout():
    d = MatchingAwareDiscriminator(embedding_dim=10, projection_dim=4, ndf=2)
    keys = set(d.state_dict())
    assert {"join.weight", "join_norm.running_mean", "score.weight", "project_text.0.weight"} <= keys
    assert d.join.weight.shape == (16, 16 + 4, 1, 1)  # the 1×1 conv over [features; text], as in the paper
