"""Plain-PyTorch word-region attention: the definition the kernels are tested against."""

import torch


def word_region_attention_reference(regions, words, pad_mask, return_attn):
    """(context [B, C, N], attn [B, T, N] or None); see ``t2ifast.ops.word_region_attention``."""
    scores = torch.bmm(regions.transpose(1, 2), words)  # [B, N, T]
    if pad_mask is not None:
        scores = scores.masked_fill(pad_mask[:, None, :], float("-inf"))
        # A sample whose words are all padding would softmax a row of -inf (NaN): give it finite scores,
        # then zero its attention, so that its context and gradients are exactly zero.
        has_words = ~pad_mask.all(dim=1)
        scores = torch.where(has_words[:, None, None], scores, 0.0)
        attn = torch.softmax(scores, dim=-1) * has_words[:, None, None]
    else:
        attn = torch.softmax(scores, dim=-1)
    context = torch.bmm(words, attn.transpose(1, 2))  # [B, C, N]
    return context, (attn.transpose(1, 2) if return_attn else None)
