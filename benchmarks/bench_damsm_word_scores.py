"""damsm_word_scores forward and forward+backward at AttnGAN's DAMSM shape (B = M = 48 image-caption
pairs, D = 256, T = 18 words, N = 17 * 17 regions): the fused all-pairs kernel against the per-caption
loop of the AttnGAN release, the all-pairs reference eager, and torch.compile of it.

TFLOP/s counts the products an implementation cannot avoid: per pair, the scores and the contexts
(2 x 2DTN) forward, and 5 more products of that size backward.
"""

import pytest
import torch
from harness import DEVICE, SMOKE, available_backends, compiled_reference, measure, with_backend

from t2ifast.ops import damsm_word_scores, damsm_word_scores_loop

OP = "damsm_word_scores"
B, D, T, N = (3, 16, 5, 20) if SMOKE else (48, 256, 18, 17 * 17)
GAMMA1, GAMMA2 = 4.0, 5.0


def _scores(words, lengths, regions):
    return damsm_word_scores(words, lengths, regions, gamma1=GAMMA1, gamma2=GAMMA2)


def _loop(words, lengths, regions):
    return damsm_word_scores_loop(words, lengths, regions, GAMMA1, GAMMA2)


def _with_backward(forward):
    def step(words, lengths, regions):
        scores = forward(words, lengths, regions)
        return torch.autograd.grad(scores.logsumexp(dim=1).sum(), (words, regions))

    return step


FORWARDS = {
    **{name: with_backend(name, _scores) for name in available_backends(OP)},
    "reference": with_backend("reference", _scores),
    "compiled_reference": compiled_reference(_scores),
    "attngan_loop": _loop,
}
FORWARD_BACKWARDS = {name: _with_backward(fn) for name, fn in FORWARDS.items() if name != "compiled_reference"}
FORWARD_BACKWARDS["compiled_reference"] = compiled_reference(_with_backward(_scores))


def _inputs():
    words = torch.randn(B, D, T, device=DEVICE, requires_grad=True)
    lengths = torch.randint(1, T + 1, (B,), device=DEVICE)
    regions = torch.randn(B, D, N, device=DEVICE, requires_grad=True)
    return words, lengths, regions


@pytest.mark.parametrize("implementation", list(FORWARDS))
def test_damsm_word_scores_fwd(benchmark, implementation):
    benchmark.group = f"damsm_word_scores fwd B=M={B} D={D} T={T} N={N}"
    with torch.no_grad():
        measure(benchmark, FORWARDS[implementation], *_inputs(), flops=B * B * 2 * 2 * D * T * N)


@pytest.mark.parametrize("implementation", list(FORWARD_BACKWARDS))
def test_damsm_word_scores_fwd_bwd(benchmark, implementation):
    benchmark.group = f"damsm_word_scores fwd+bwd B=M={B} D={D} T={T} N={N}"
    measure(benchmark, FORWARD_BACKWARDS[implementation], *_inputs(), flops=B * B * 7 * 2 * D * T * N)
