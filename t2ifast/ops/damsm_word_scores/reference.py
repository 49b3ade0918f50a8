"""Plain-PyTorch DAMSM word scores: the all-pairs definition the kernels are tested against, and the
per-caption loop of the AttnGAN release (the baseline the fused kernels are benchmarked against)."""

import torch
import torch.nn.functional as F

# AttnGAN's cosine similarity clamps the product of the norms from below by this.
COSINE_EPS = 1e-8


def _cosine(x, y, dim):
    """x . y / max(|x| |y|, eps) along dim, as AttnGAN's cosine_similarity."""
    return (x * y).sum(dim) / (x.norm(dim=dim) * y.norm(dim=dim)).clamp(min=COSINE_EPS)


def damsm_word_scores_reference(words, lengths, regions, gamma1, gamma2):
    """scores[i, j] between image i (regions [M, D, N]) and caption j (words [B, D, T], lengths [B])."""
    T = words.shape[2]
    valid = torch.arange(T, device=words.device)[None, :] < lengths[:, None]  # [B, T]
    # s[i, j, t, n] = words[j, :, t] . regions[i, :, n]
    s = torch.einsum("jdt,idn->ijtn", words, regions)
    s = s.masked_fill(~valid[None, :, :, None], float("-inf"))
    a = torch.softmax(s, dim=2)  # each region over the caption's words
    b = torch.softmax(gamma1 * a, dim=3)  # each word over the regions
    context = torch.einsum("idn,ijtn->ijdt", regions, b)  # region-context of each word
    cos = _cosine(words[None], context, dim=2)  # [M, B, T]
    return torch.logsumexp((gamma2 * cos).masked_fill(~valid[None], float("-inf")), dim=2)


def damsm_word_scores_loop(words, lengths, regions, gamma1, gamma2):
    """The same scores computed the way the AttnGAN release does (``words_loss`` / ``func_attention``):
    a Python loop over the captions, each caption's words repeated against every image. Reads the
    lengths on the host. Kept as the benchmark baseline."""
    M = regions.shape[0]
    columns = []
    for j, length in enumerate(lengths.tolist()):
        word = words[j, :, :length].unsqueeze(0).expand(M, -1, -1)  # [M, D, L]
        attn = torch.bmm(regions.transpose(1, 2), word)  # [M, N, L]
        attn = torch.softmax(attn, dim=2)  # over words
        attn = torch.softmax(gamma1 * attn.transpose(1, 2), dim=2)  # [M, L, N], over regions
        context = torch.bmm(regions, attn.transpose(1, 2))  # [M, D, L]
        cos = F.cosine_similarity(word, context, dim=1, eps=COSINE_EPS)  # [M, L]
        columns.append(torch.log(torch.exp(gamma2 * cos).sum(dim=1, keepdim=True)))
    return torch.cat(columns, dim=1)  # [M, B]
