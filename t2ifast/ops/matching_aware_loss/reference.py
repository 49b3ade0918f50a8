"""Plain-PyTorch matching-aware loss: the definition the kernels are tested against."""

import torch
import torch.nn.functional as F


def negative_weight(s_wrong, s_fake):
    """Weight of each negative term: (L_wrong + L_fake) / 2 when both groups are there (GAN-CLS);
    weight 1 for the one present otherwise (a plain GAN has no wrong pairs)."""
    return 0.5 if s_wrong.numel() > 0 and s_fake.numel() > 0 else 1.0


def _term(logits, target, reduction):
    if logits.numel() == 0:  # a zero term (a mean over nothing would be NaN), still part of the graph
        return logits.sum()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction=reduction)


def matching_aware_loss_reference(s_real, s_wrong, s_fake, real_target, reduction):
    """(loss, L_real, L_wrong, L_fake) with L = L_real + w (L_wrong + L_fake)."""
    real = _term(s_real, real_target, reduction)
    wrong = _term(s_wrong, 0.0, reduction)
    fake = _term(s_fake, 0.0, reduction)
    w = negative_weight(s_wrong, s_fake)
    return real + w * (wrong + fake), real, wrong, fake
