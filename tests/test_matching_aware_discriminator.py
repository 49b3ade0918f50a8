"""The shared-trunk, untiled scoring of the three pair groups equals three separate discriminator calls."""

import copy

import pytest
import torch

from t2ifast.models.matching_aware_discriminator import MatchingAwareDiscriminator


def _inputs(batch=5, embedding_dim=24, size=64):
    real, fake = torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size, requires_grad=True)
    right, wrong = torch.randn(batch, embedding_dim), torch.randn(batch, embedding_dim)
    return real, fake, right, wrong


@pytest.mark.parametrize("with_wrong", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(("size", "unconditional"), [(64, False), (32, True), (128, True)])
def test_score_pairs_equals_separate_calls(with_wrong, training, size, unconditional):
    torch.manual_seed(int.from_bytes(__import__("os").urandom(2), "little"))
    fused = MatchingAwareDiscriminator(
        embedding_dim=24, projection_dim=16, ndf=8, image_size=size, unconditional=unconditional
    ).double()
    separate = copy.deepcopy(fused)
    fused.train(training)
    separate.train(training)
    real, fake, right, wrong = (x.double().detach().requires_grad_(True) for x in _inputs(size=size))
    wrong_arg = wrong if with_wrong else None

    s_real, s_wrong, s_fake, u_real, u_fake = fused.score_pairs(real, fake, right, wrong_arg)
    # in the order a training step calls them, which the running statistics see
    calls = [separate.score_images(real, right), *([separate(real, wrong)] if with_wrong else [])]
    calls.append(separate.score_images(fake, right))
    expected = [c if isinstance(c, torch.Tensor) else c.conditional for c in calls]
    got = [s_real, s_wrong, s_fake] if with_wrong else [s_real, s_fake]
    if unconditional:
        expected += [calls[0].unconditional, calls[-1].unconditional]
        got += [u_real, u_fake]
    else:
        assert u_real is None and u_fake is None
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


def test_trunk_ends_at_4x4_for_every_size():
    for size, channels in [(64, 64), (128, 64), (256, 64), (32, 32)]:
        d = MatchingAwareDiscriminator(embedding_dim=6, projection_dim=4, ndf=8, image_size=size, unconditional=True)
        assert d.trunk(torch.randn(2, 3, size, size)).shape == (2, channels, 4, 4)
        scores = d.score_images(torch.randn(3, 3, size, size), torch.randn(3, 6))
        assert scores.conditional.shape == scores.unconditional.shape == (3,)


def test_bad_image_size_is_named():
    with pytest.raises(ValueError, match="image_size must be a power of two"):
        MatchingAwareDiscriminator(embedding_dim=6, image_size=100)
    d = MatchingAwareDiscriminator(embedding_dim=6, projection_dim=4, ndf=4, image_size=128)
    with pytest.raises(ValueError, match=r"image must be \[N, 3, 128, 128\]"):
        d(torch.randn(2, 3, 64, 64), torch.randn(2, 6))
