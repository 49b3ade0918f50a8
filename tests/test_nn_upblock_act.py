"""t2ifast.nn.UpBlock with act="relu" / "leaky_relu" (StackGAN's up-block): the same state_dict, outputs,
gradients and running statistics as nn.Sequential(Upsample, Conv2d, BatchNorm2d, ReLU | LeakyReLU)."""

import pytest
import torch
from kernel_testing import kernel_backends
from torch import nn

import t2ifast
from t2ifast.nn import UpBlock

BACKENDS = ["reference", *kernel_backends("bn_act_train", "cpu")[:1]]
ACTIVATIONS = {"relu": lambda: nn.ReLU(), "leaky_relu": lambda: nn.LeakyReLU(0.2)}


def _sequential(c_in, c_out, act):
    """StackGAN's upBlock: nearest x2 -> conv3x3 (no bias) -> BatchNorm2d -> ReLU."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False),
        nn.BatchNorm2d(c_out),
        ACTIVATIONS[act](),
    )


def _randomize(model):
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand_like(module.weight) + 0.5)
                module.bias.copy_(torch.randn_like(module.bias) * 0.5)
                module.running_mean.copy_(torch.randn_like(module.running_mean) * 0.1)
                module.running_var.copy_(torch.rand_like(module.running_var) + 0.5)
    return model


def _step(model, x, seed):
    """Output, input and parameter gradients, and the buffers after one forward/backward."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad(out, [x, *model.parameters()], grad)
    return [out.detach(), *grads, *(b.clone() for b in model.buffers())]


def _assert_same(block, reference, inputs, backend):
    for seed, x in enumerate(inputs):
        with t2ifast.backend(backend):
            got = _step(block, x, seed)
        expected = _step(reference, x, seed)
        for index, (a, b) in enumerate(zip(got, expected, strict=True)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, i=index, s=seed: f"step {s}, {i}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_up_block_matches_the_sequential(backend, act):
    torch.manual_seed(5)
    reference = _randomize(_sequential(6, 4, act))
    block = UpBlock(6, 4, act=act)
    assert block.act == act and block._modules["1"].out_channels == 4
    assert list(block.state_dict()) == list(reference.state_dict())
    block.load_state_dict(reference.state_dict())
    _assert_same(block, reference, [torch.randn(4, 6, 5, 3) for _ in range(2)], backend)  # train: batch statistics
    block.eval()
    reference.eval()
    _assert_same(block, reference, [torch.randn(4, 6, 4, 4)], backend)  # eval: running statistics


def test_state_dict_loads_both_ways():
    torch.manual_seed(6)
    block = _randomize(UpBlock(3, 5, act="relu"))
    reference = _sequential(3, 5, "relu")
    reference.load_state_dict(block.state_dict())
    fresh = UpBlock(3, 5, act="relu")
    fresh.load_state_dict(reference.state_dict())
    for name, tensor in block.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], tensor, rtol=0, atol=0)
        torch.testing.assert_close(reference.state_dict()[name], tensor, rtol=0, atol=0)


def test_glu_block_is_unchanged_and_bad_act_is_named():
    glu = UpBlock(3, 5)
    assert glu.act == "glu" and isinstance(glu._modules["3"], nn.GLU)
    assert {name: tuple(t.shape) for name, t in glu.state_dict().items()} == {
        "1.weight": (10, 3, 3, 3),
        "2.weight": (10,),
        "2.bias": (10,),
        "2.running_mean": (10,),
        "2.running_var": (10,),
        "2.num_batches_tracked": (),
    }
    assert UpBlock(3, 5, act="leaky_relu", negative_slope=0.1).negative_slope == pytest.approx(0.1)
    with pytest.raises(ValueError, match="act must be one of 'glu', 'relu', 'leaky_relu'; got 'gelu'"):
        UpBlock(3, 5, act="gelu")
