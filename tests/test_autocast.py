"""Mixed precision: under torch.autocast(bfloat16) every fused layer computes what the plain-PyTorch modules
it replaces compute under the same autocast (convolutions in bfloat16, BatchNorm with float32 parameters and
running statistics), gradients reach the float32 parameters, and a training step of each task runs."""

import copy
import math

import pytest
import torch
from kernel_testing import kernel_backends
from torch import nn

import t2ifast
from t2ifast.data import generate_synthetic, open_dataset
from t2ifast.models.attngan import ResBlock
from t2ifast.models.image_encoder import ImageEncoder
from t2ifast.models.matching_aware_discriminator import MatchingAwareDiscriminator
from t2ifast.nn import DeconvBNAct, UpBlock, WordRegionAttention
from t2ifast.ops import generator_loss, matching_aware_loss
from t2ifast.ops.matching_aware_loss.reference import matching_aware_loss_reference
from t2ifast.ops.word_region_attention.reference import word_region_attention_reference
from t2ifast.training.attngan import AttnGANTask
from t2ifast.training.config import load_config
from t2ifast.training.gan_int_cls import GANINTCLSTask
from t2ifast.training.runtime import Runtime

BF16 = torch.bfloat16
BACKENDS = ["reference", *kernel_backends("bn_act_train", "cpu")]


def _autocast():
    return torch.autocast("cpu", dtype=BF16)


def _assert_close_bf16(got, expected, name, scale=2e-2):
    """Close for bfloat16 computations: within a few bf16 roundings of the values' magnitude."""
    assert got.dtype == expected.dtype, (name, got.dtype, expected.dtype)
    bound = scale * max(expected.float().abs().max().item(), 1e-3)
    torch.testing.assert_close(got.float(), expected.float(), rtol=scale, atol=bound, msg=lambda m: f"{name}: {m}")


def _assert_grad_close(got, expected, name, scale=3e-2):
    """Gradients through bfloat16: close in norm (an element where bf16 rounding flips a ReLU differs more)."""
    assert got.dtype == expected.dtype == torch.float32 and torch.isfinite(got).all(), name
    error = (got - expected).norm() / expected.norm().clamp_min(1e-6)
    assert error < scale, f"{name}: relative error {error:.3g}"


def _randomize_bn(module):
    generator = torch.Generator().manual_seed(5)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            with torch.no_grad():
                bn.weight.copy_(torch.rand(bn.weight.shape, generator=generator) + 0.5)
                bn.bias.copy_(torch.randn(bn.bias.shape, generator=generator) * 0.3)
                bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=generator) * 0.1)
                bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=generator) + 0.5)
    return module


def _run(module, x, backend=None, forward=None):
    """(output, grads of x and of every parameter) of one forward under bf16 autocast and a float32 backward."""
    x = x.clone().requires_grad_(True)
    with t2ifast.backend(backend), _autocast():
        out = (forward or module)(x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.float().backward(grad)
    return out, {"x": x.grad, **{name: p.grad for name, p in module.named_parameters()}}


def _check_against_plain(fused, plain, x, backend, *, forward=None, plain_forward=None, train=True):
    """fused and plain (same state) give close outputs, running statistics and float32 gradients under autocast."""
    fused.train(train), plain.train(train)
    initial = copy.deepcopy(fused.state_dict())
    out, grads = _run(fused, x, backend, forward)
    expected, expected_grads = _run(plain, x, None, plain_forward)
    _assert_close_bf16(out, expected, "output")  # and of the same dtype
    # In eval mode BatchNorm is folded into the bf16 conv weight: rounded differently, a few outputs near 0 fall
    # on the other side of the ReLU, each changing the gradient by a whole term (as plain bf16 vs float32 does).
    for (name, got), want in zip(grads.items(), expected_grads.values(), strict=True):
        _assert_grad_close(got, want, f"grad of {name}", 3e-2 if train else 0.1)  # x and parameters: float32
    plain_state = plain.state_dict()
    for name, value in fused.state_dict().items():
        assert value.dtype == plain_state[name].dtype, name  # float32 parameters and statistics stay float32
        if name.endswith(("running_mean", "running_var")):
            assert train != torch.equal(value, initial[name]), f"{name} updated in place (in training only)"
            torch.testing.assert_close(
                value, plain_state[name], rtol=1e-3, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
            )
        else:
            torch.testing.assert_close(value, plain_state[name])


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_deconv_bn_act(backend, train):
    torch.manual_seed(0)
    plain = _randomize_bn(nn.Sequential(nn.ConvTranspose2d(6, 8, 4, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()))
    fused = DeconvBNAct(6, 8, 4, 2, 1)
    fused.load_state_dict(plain.state_dict())
    _check_against_plain(fused, plain, torch.randn(4, 6, 5, 5), backend, train=train)


@pytest.mark.parametrize(("act", "train"), [("glu", True), ("relu", True), ("glu", False)], ids=["glu", "relu", "eval"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_up_block(backend, act, train):
    torch.manual_seed(0)
    fused = _randomize_bn(UpBlock(6, 4, act=act))
    plain = copy.deepcopy(nn.Sequential(*fused.children()))  # AttnGAN's / StackGAN's upBlock
    _check_against_plain(fused, plain, torch.randn(3, 6, 4, 4), backend, train=train)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_attngan_res_block(backend, train):
    torch.manual_seed(0)
    fused = _randomize_bn(ResBlock(4))
    plain = copy.deepcopy(fused)
    x = torch.randn(3, 4, 6, 6)
    _check_against_plain(fused, plain, x, backend, plain_forward=lambda x: plain.block(x) + x, train=train)


def _word_region_attention_backends():
    """Triton runs CPU tensors in its interpreter only, which multiplies bfloat16 tl.dot operands as their uint16
    bit patterns: no Triton here."""
    skip = pytest.mark.skip(reason="Triton's interpreter has no bfloat16 tl.dot")
    params = kernel_backends("word_region_attention", "cpu")
    return ["reference", *(pytest.param("triton", marks=skip) if p.id == "triton" else p for p in params)]


@pytest.mark.parametrize("backend", _word_region_attention_backends())
def test_word_region_attention(backend):
    torch.manual_seed(0)
    layer = WordRegionAttention(6, 5)
    words = torch.randn(3, 5, 4)
    pad_mask = torch.tensor([[False] * 4, [False, False, True, True], [False, True, True, True]])

    def plain(h):  # AttnGAN's GlobalAttentionGeneral: 1x1 conv on the words, bmm, masked softmax, bmm
        projected = torch.matmul(layer.conv_context.weight.view(6, 5), words)
        context, attn = word_region_attention_reference(h.flatten(2), projected, pad_mask, True)
        return torch.cat([context.flatten(), attn.flatten()])

    def fused(h):
        context, attn = layer(h, words, pad_mask)
        assert context.dtype == attn.dtype == BF16
        return torch.cat([context.flatten(), attn.flatten()])

    h = torch.randn(3, 6, 3, 3)
    out, grads = _run(layer, h, backend, fused)
    expected, expected_grads = _run(layer, h, None, plain)
    _assert_close_bf16(out, expected, "context and attention")
    for (name, got), want in zip(grads.items(), expected_grads.values(), strict=True):
        _assert_grad_close(got, want, f"grad of {name}")


@pytest.mark.parametrize("backend", ["reference", *kernel_backends("matching_aware_loss", "cpu")])
def test_discriminator_scores_and_matching_aware_loss(backend):
    torch.manual_seed(0)
    discriminator = MatchingAwareDiscriminator(12, projection_dim=4, ndf=4, image_size=16)
    same_discriminator = copy.deepcopy(discriminator)
    real, fake = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    right, wrong = torch.randn(4, 12), torch.randn(4, 12)

    def step(discriminator, loss_fn):
        with t2ifast.backend(backend if loss_fn is matching_aware_loss else None), _autocast():
            scores = discriminator.score_pairs(real, fake, right, wrong)
            assert scores.real.dtype == BF16
            if loss_fn is matching_aware_loss:
                d, g = loss_fn(scores.real, scores.wrong, scores.fake, smoothing=0.1), generator_loss(scores.fake)
            else:  # the float32 logits the training steps pass
                s_real, s_wrong, s_fake = scores.real.float(), scores.wrong.float(), scores.fake.float()
                d = loss_fn(s_real, s_wrong, s_fake, 0.9, "mean")
                g = loss_fn(s_fake, s_fake[:0], s_fake[:0], 1.0, "mean")[0]
        assert all(value.dtype == torch.float32 for value in (*d, g))  # losses in float32, as autocast's BCE
        (d[0] + g).backward()
        return torch.stack([*d, g]), {name: p.grad for name, p in discriminator.named_parameters()}

    losses, grads = step(discriminator, matching_aware_loss)
    expected, expected_grads = step(same_discriminator, matching_aware_loss_reference)
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-5)
    for name, got in grads.items():  # through bf16 convolutions: the loss kernels' float32 rounding shows
        _assert_grad_close(got, expected_grads[name], f"grad of {name}", 1e-2)


# ----------------------------------------------------------------------------- training steps under bf16 autocast


def _finite_losses(losses):
    assert losses and all(math.isfinite(value.item()) for value in losses.values()), losses


def _changed_float32_parameters(module, before):
    for name, p in module.named_parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all(), name
    return sum(not torch.equal(before[name], p) for name, p in module.named_parameters())


def test_gan_int_cls_step_under_bf16_autocast(tmp_path):
    from test_training import TINY, _embed, _loader

    dataset = open_dataset(generate_synthetic(tmp_path, num_images=16, size=64, seed=3), "train")
    config = load_config(overrides=[*TINY, "model=gan-int-cls"])
    torch.manual_seed(0)
    embed = _embed(dataset)
    image_encoder = ImageEncoder(32, input_size=32, width=4)  # the DAMSM loss of the default runs under bf16 too
    task = GANINTCLSTask(config, embed, Runtime(torch.device("cpu"), amp="bf16"), image_encoder=image_encoder)
    before = {name: p.detach().clone() for name, p in task.generator.named_parameters()}
    _finite_losses(task.train_step(next(iter(_loader(dataset)))))
    assert _changed_float32_parameters(task.generator, before) == len(before)
    with torch.no_grad(), task.runtime.autocast():  # the step ran the generator in bf16
        assert task.generator(torch.randn(2, config.gan.z_dim), torch.randn(2, embed.embedding_dim)).dtype == BF16


def test_attngan_step_under_bf16_autocast():
    from test_attngan import TINY, _batch, _encoders

    config = load_config(overrides=[*TINY, "attngan.stages=2"])
    torch.manual_seed(0)
    text, image = _encoders()
    task = AttnGANTask(config, text, image, Runtime(torch.device("cpu"), amp="bf16"))
    before = {name: p.detach().clone() for name, p in task.generator.named_parameters()}
    _finite_losses(task.train_step(_batch(2, 1)))
    assert _changed_float32_parameters(task.generator, before) == len(before)
