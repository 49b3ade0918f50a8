"""matching_aware_loss forward+backward: each fused backend vs the reference, eager and compiled.

Shape: the discriminator logits of a GAN-CLS step, batch 64 (and a large batch, where bandwidth shows).
"""

import pytest
import torch
from harness import DEVICE, SMOKE, available_backends, compiled_reference, measure, with_backend

from t2ifast.ops import matching_aware_loss

BATCHES = [64] if SMOKE else [64, 4096, 1 << 20]


def _loss_and_grads(s_real, s_wrong, s_fake):
    out = matching_aware_loss(s_real, s_wrong, s_fake, smoothing=0.1)
    return torch.autograd.grad(out.loss, (s_real, s_wrong, s_fake))


IMPLEMENTATIONS = {
    **{name: with_backend(name, _loss_and_grads) for name in available_backends("matching_aware_loss")},
    "reference": with_backend("reference", _loss_and_grads),
    "compiled_reference": compiled_reference(_loss_and_grads),
}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
def test_matching_aware_loss_fwd_bwd(benchmark, implementation, batch):
    benchmark.group = f"matching_aware_loss fwd+bwd B={batch}"
    logits = [torch.randn(batch, device=DEVICE, requires_grad=True) for _ in range(3)]
    element = logits[0].element_size()
    # read 3B logits, write 3B saved gradients, read them and write 3B input gradients in backward
    measure(benchmark, IMPLEMENTATIONS[implementation], *logits, bytes_moved=12 * batch * element)
