"""AttnGAN's word-region attention layer F_attn on the fused ``t2ifast.ops.word_region_attention``."""

import torch
from torch import nn

from t2ifast.ops import word_region_attention


class WordRegionAttention(nn.Module):
    """Each image region attends over the caption's words, projected to the image feature dim.

    The projection is a 1x1 convolution without bias stored as ``conv_context`` with a Conv2d weight
    ``[image_dim, word_dim, 1, 1]``, the layout of AttnGAN's ``GlobalAttentionGeneral.conv_context``,
    so that layer's state_dict loads unchanged.

    Args:
        image_dim: C, channels of the image features h (AttnGAN's idf).
        word_dim: D, channels of the word features (AttnGAN's cdf).

    Forward:
        h: ``[B, C, H, W]`` image features; words: ``[B, D, T]``; pad_mask: ``[B, T]`` bool (True =
        padding) or None. Returns ``(context [B, C, H, W], attn [B, T, H, W])``; with
        ``return_attn=False`` attn is None and is never written to memory by the fused kernels.
        Each sample is masked by its own pad_mask row (see ``t2ifast.ops.word_region_attention`` for how
        this differs from AttnGAN's released code).
    """

    def __init__(self, image_dim: int, word_dim: int):
        super().__init__()
        self.image_dim = image_dim
        self.word_dim = word_dim
        self.conv_context = nn.Conv2d(word_dim, image_dim, kernel_size=1, bias=False)

    def forward(self, h, words, pad_mask=None, *, return_attn=True):
        B, C, H, W = h.shape
        if C != self.image_dim:
            raise ValueError(f"h must be [B, {self.image_dim}, H, W], got shape {tuple(h.shape)}")
        if words.dim() != 3 or words.shape[1] != self.word_dim:
            raise ValueError(f"words must be [B, {self.word_dim}, T], got shape {tuple(words.shape)}")
        # the 1x1 convolution of AttnGAN (applied to words.unsqueeze(3)) is a matrix product over D
        projected = torch.matmul(self.conv_context.weight.view(self.image_dim, self.word_dim), words)  # [B, C, T]
        context, attn = word_region_attention(h.reshape(B, C, H * W), projected, pad_mask, return_attn=return_attn)
        context = context.view(B, C, H, W)
        return context, (attn.view(B, -1, H, W) if attn is not None else None)

    def extra_repr(self):
        return f"image_dim={self.image_dim}, word_dim={self.word_dim}"
