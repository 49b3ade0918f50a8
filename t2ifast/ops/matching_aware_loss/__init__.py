"""The GAN-CLS matching-aware discriminator loss (Reed et al., 2016) and the generator's loss, on logits.

The discriminator sees three pair groups: (real image, right text) -> 1, (real image, wrong text) -> 0,
(fake image, right text) -> 0, and minimises L = L_real + (L_wrong + L_fake) / 2, each term a binary
cross-entropy on logits (log-sigmoid form: finite for any logit). One pass over the logits computes the
loss, the three terms and every gradient; nothing is copied to the host. Training sizes (up to 16,384
logits in all) run as one block / program and one launch; larger inputs are split over a grid whose
per-block partial sums a second small kernel adds in a fixed order (deterministic, no atomics).
"""

from typing import NamedTuple

import torch

from t2ifast import _autocast, _backend
from t2ifast._validation import check_choice, check_floating_tensors, check_range

from . import registration  # noqa: F401 - registers autograd and fake functions
from .reference import matching_aware_loss_reference

_OP = "matching_aware_loss"


class DiscriminatorLoss(NamedTuple):
    """The loss to minimise and its three terms (0-dim tensors; log them without a host sync)."""

    loss: torch.Tensor
    real: torch.Tensor
    wrong: torch.Tensor
    fake: torch.Tensor


def _run(s_real, s_wrong, s_fake, real_target, reduction):
    backend = _backend.select(_OP, s_real.device.type)
    if backend == "reference":
        return matching_aware_loss_reference(s_real, s_wrong, s_fake, real_target, reduction)
    op = torch.ops.t2ifast.matching_aware_loss if backend == "native" else torch.ops.t2ifast.matching_aware_loss_triton
    values = op(s_real, s_wrong, s_fake, real_target, reduction == "mean")[0]
    return values[0], values[1], values[2], values[3]


def _float32_under_autocast(*logits):
    if not all(isinstance(t, torch.Tensor) for t in logits):  # left for the checks to name
        return logits
    return _autocast.cast_float32(logits[0].device.type, *logits)


def matching_aware_loss(s_real, s_wrong, s_fake, *, smoothing=0.0, reduction="mean"):
    """The discriminator's GAN-CLS loss.

    Args:
        s_real: logits of D(real image, right text), any shape.
        s_wrong: logits of D(real image, wrong text); empty for a plain conditional GAN, whose loss is
            then L_real + L_fake.
        s_fake: logits of D(fake image, right text).
        smoothing: one-sided label smoothing: the real target is ``1 - smoothing``.
        reduction: ``"mean"`` (each term averaged over its group) or ``"sum"``.

    Returns:
        DiscriminatorLoss(loss, real, wrong, fake).

    Under torch.autocast the logits are cast to float32, as autocast casts binary_cross_entropy_with_logits's.
    """
    s_real, s_wrong, s_fake = _float32_under_autocast(s_real, s_wrong, s_fake)
    check_floating_tensors(s_real=s_real, s_wrong=s_wrong, s_fake=s_fake)
    check_range("smoothing", smoothing, 0.0, 1.0, high_inclusive=False)
    check_choice("reduction", reduction, ("mean", "sum"))
    return DiscriminatorLoss(*_run(s_real, s_wrong, s_fake, 1.0 - smoothing, reduction))


def generator_loss(s_fake, *, reduction="mean"):
    """The generator's non-saturating loss -log sigmoid(s_fake): the 'real' term on fake logits (float32 under
    torch.autocast, as ``matching_aware_loss``)."""
    (s_fake,) = _float32_under_autocast(s_fake)
    check_floating_tensors(s_fake=s_fake)
    check_choice("reduction", reduction, ("mean", "sum"))
    empty = s_fake.new_empty(0)
    return _run(s_fake, empty, empty, 1.0, reduction)[0]
