"""t2ifast.nn.WordRegionAttention: AttnGAN's attention layer, its state_dict layout and its outputs."""

import pytest
import torch
from kernel_testing import kernel_backends
from torch import nn

import t2ifast
from t2ifast.nn import WordRegionAttention


class AttnGANStyleAttention(nn.Module):
    """The computation of AttnGAN's GlobalAttentionGeneral, restated: a bias-free 1x1 Conv2d on the words
    unsqueezed to [B, D, T, 1], scores h^T e', softmax over words, context e' attn^T. The mask is applied
    per sample (where AttnGAN tiles it; identical for B = 1)."""

    def __init__(self, idf, cdf):
        super().__init__()
        self.conv_context = nn.Conv2d(cdf, idf, kernel_size=1, stride=1, padding=0, bias=False)

    def forward(self, h, words, mask=None):
        B, C, H, W = h.shape
        source = self.conv_context(words.unsqueeze(3)).squeeze(3)  # [B, C, T]
        attn = torch.bmm(h.view(B, C, H * W).transpose(1, 2), source)  # [B, HW, T]
        if mask is not None:
            attn = attn.masked_fill(mask[:, None, :], float("-inf"))
        attn = torch.softmax(attn, dim=2).transpose(1, 2)  # [B, T, HW]
        context = torch.bmm(source, attn)
        return context.view(B, C, H, W), attn.reshape(B, -1, H, W)


def test_loads_attngan_state_dict():
    attngan = AttnGANStyleAttention(idf=32, cdf=24)
    layer = WordRegionAttention(image_dim=32, word_dim=24)
    assert set(layer.state_dict()) == {"conv_context.weight"}
    assert layer.state_dict()["conv_context.weight"].shape == (32, 24, 1, 1)
    layer.load_state_dict(attngan.state_dict(), strict=True)
    torch.testing.assert_close(layer.conv_context.weight, attngan.conv_context.weight)


@pytest.mark.parametrize("backend", ["reference", *kernel_backends("word_region_attention", "cpu")])
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_attngan_computation(backend, batch):
    torch.manual_seed(batch)
    attngan = AttnGANStyleAttention(idf=16, cdf=10)
    layer = WordRegionAttention(16, 10)
    layer.load_state_dict(attngan.state_dict())
    h = torch.randn(batch, 16, 7, 5, requires_grad=True)
    words = torch.randn(batch, 10, 6, requires_grad=True)
    mask = torch.rand(batch, 6) < 0.3
    mask[:, 0] = False
    with t2ifast.backend(backend):
        context, attn = layer(h, words, mask)
    want_context, want_attn = attngan(h, words, mask)
    assert context.shape == (batch, 16, 7, 5) and attn.shape == (batch, 6, 7, 5)
    torch.testing.assert_close(context, want_context, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attn, want_attn, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(context.sum() + attn.square().sum(), (h, words, layer.conv_context.weight))
    want = torch.autograd.grad(want_context.sum() + want_attn.square().sum(), (h, words, attngan.conv_context.weight))
    for g, w in zip(grads, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_without_attention_map():
    layer = WordRegionAttention(8, 4)
    h, words = torch.randn(2, 8, 3, 3), torch.randn(2, 4, 5)
    context, attn = layer(h, words, return_attn=False)
    assert attn is None
    torch.testing.assert_close(context, layer(h, words)[0])


def test_bad_shapes_are_named():
    layer = WordRegionAttention(8, 4)
    with pytest.raises(ValueError, match=r"h must be \[B, 8, H, W\]"):
        layer(torch.randn(2, 7, 3, 3), torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match=r"words must be \[B, 4, T\]"):
        layer(torch.randn(2, 8, 3, 3), torch.randn(2, 5, 5))
