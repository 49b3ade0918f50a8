"""bn_act / deconv_bn_act / upsample_conv_bn_act: every implementation against torch's modules and the reference."""

import math

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import HAS_CUDA, kernel_backends, requires_cuda
from torch import nn

import t2ifast
from t2ifast import _extension
from t2ifast.ops import bn_act, deconv_bn_act, fold_batch_norm, upsample_conv_bn_act
from t2ifast.ops.deconv_bn_act.upsample_conv import upsample_conv2d

OP = "bn_act_train"
ACTS = ["relu", "leaky_relu", "glu", "none"]
CPU_BACKENDS = kernel_backends(OP, "cpu")


def _activation_module(act, negative_slope=0.2):
    return {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(negative_slope), "glu": nn.GLU(dim=1), "none": nn.Identity()}[
        act
    ]


def _randomize_bn(bn):
    """BatchNorm with non-trivial affine parameters and running statistics (never the init values)."""
    with torch.no_grad():
        bn.weight.copy_(torch.randn_like(bn.weight) * 0.5 + 1.0)
        bn.bias.copy_(torch.randn_like(bn.bias))
        bn.running_mean.copy_(torch.randn_like(bn.running_mean))
        bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
    return bn


def _bn_state(c, dtype=torch.float32, device="cpu"):
    bn = _randomize_bn(nn.BatchNorm2d(c, device=device, dtype=dtype))
    return bn.weight.detach(), bn.bias.detach(), bn.running_mean.clone(), bn.running_var.clone()


def _run_bn_act(backend, y, weight, bias, running_mean, running_var, grad_seed=0, grad_dtype=None, **kwargs):
    """Output, gradients of (y, weight, bias) for a fixed random upstream gradient, and the running stats.
    The upstream gradient is drawn in float32 and rounded to grad_dtype (default y's): a reference run on
    upcast inputs gets exactly the gradient a bfloat16 run got by passing grad_dtype=torch.bfloat16."""
    y, weight, bias = (t.detach().clone().requires_grad_(True) for t in (y, weight, bias))
    running_mean, running_var = running_mean.clone(), running_var.clone()
    with t2ifast.backend(backend):
        out = bn_act(y, weight, bias, running_mean, running_var, **kwargs)
    generator = torch.Generator(device=y.device).manual_seed(grad_seed)
    grad = torch.randn(out.shape, generator=generator, device=y.device).to(grad_dtype or y.dtype).to(y.dtype)
    out.backward(grad)
    return [out.detach(), y.grad, weight.grad, bias.grad, running_mean, running_var]


def _assert_all_close(got, expected, summed_count=1, **tolerances):
    """Results in _run_bn_act's order. grad_weight and grad_bias (results 2 and 3) are sums of summed_count terms
    per channel, whose rounding grows as the square root of the count: their atol grows with it."""
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        tol = dict(tolerances)
        if index in (2, 3) and "atol" in tol:
            tol["atol"] *= max(1.0, math.sqrt(summed_count) / 8)
        torch.testing.assert_close(a, b, **tol, msg=lambda m, i=index: f"result {i}: {m}")


# --- BatchNorm + activation ------------------------------------------------------------------------

# (2, 4, 37, 41): rows of 1,517 elements, longer than the CPU kernel's 1,024-element partial sums and not a
# multiple of them.
SHAPES = [(2, 6, 5, 7), (3, 4, 1, 1), (5, 8), (2, 4, 9), (2, 4, 37, 41)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bn_act_matches_reference_cpu(backend, act, shape, training):
    y = torch.randn(shape) * 2.0 + 0.5
    state = _bn_state(shape[1])
    kwargs = {"training": training, "act": act, "momentum": 0.3, "eps": 1e-3, "negative_slope": 0.1}
    got = _run_bn_act(backend, y, *state, **kwargs)
    expected = _run_bn_act("reference", y, *state, **kwargs)
    _assert_all_close(got, expected, y.numel() // y.shape[1], rtol=1e-5, atol=1e-5)
    if training:  # the running statistics moved
        assert not torch.equal(got[4], state[2])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bn_act_float64_is_exact(backend):
    y = torch.randn(3, 6, 4, 5, dtype=torch.float64)
    state = _bn_state(6, torch.float64)
    for act in ACTS:
        kwargs = {"training": True, "act": act}
        _assert_all_close(
            _run_bn_act(backend, y, *state, **kwargs),
            _run_bn_act("reference", y, *state, **kwargs),
            rtol=1e-12,
            atol=1e-12,
        )


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_statistics_have_no_cancellation(backend):
    """A large mean with a small spread: E[y^2] - E[y]^2 in float32 would lose every digit of the variance
    (y^2 ~ 1e6 has float32 spacing ~0.06, the variance is 1e-4). The output is centred before it is scaled,
    so it only carries the rounding of the float32 mean (an ulp at 1e3 is 6e-5, i.e. 6e-3 standard deviations)."""
    y64 = 1e3 + 1e-2 * torch.randn(4, 3, 40, 40, dtype=torch.float64)  # rows of several partial sums
    y = y64.float()
    running_mean, running_var = torch.zeros(3), torch.ones(3)
    with t2ifast.backend(backend):
        out = bn_act(y, None, None, running_mean, running_var, training=True, momentum=1.0, act="none")
    true_var = y.double().var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(running_var.double(), true_var, rtol=1e-3, atol=0)
    expected = F.batch_norm(y.double(), None, None, training=True)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_glu_splits_channels_after_batch_norm(backend):
    y = torch.randn(3, 8, 4, 4)
    weight, bias, running_mean, running_var = _bn_state(8)
    with t2ifast.backend(backend):
        out = bn_act(y, weight, bias, running_mean.clone(), running_var.clone(), training=True, act="glu")
    z = F.batch_norm(y, None, None, weight, bias, training=True)
    assert out.shape == (3, 4, 4, 4)
    torch.testing.assert_close(out, z[:, :4] * torch.sigmoid(z[:, 4:]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_input(backend):
    y = torch.randn(4, 5, 6, 3).permute(0, 3, 1, 2)  # [4, 3, 5, 6], channels-last strides
    state = _bn_state(3)
    kwargs = {"training": True, "act": "leaky_relu"}
    _assert_all_close(
        _run_bn_act(backend, y, *state, **kwargs), _run_bn_act("reference", y, *state, **kwargs), rtol=1e-5, atol=1e-5
    )


# --- transposed conv + BatchNorm + activation, against torch's modules ----------------------------

DECONV_CONFIGS = [
    # (C_in, C_out, kernel, stride, padding, output_padding, groups, dilation, H, W)
    (6, 8, 4, 1, 0, 0, 1, 1, 1, 1),  # DCGAN's first layer: z as a 1x1 image -> 4x4
    (8, 4, 4, 2, 1, 0, 1, 1, 4, 4),  # DCGAN's doubling layers
    (4, 6, 3, 2, 1, 1, 1, 1, 5, 3),  # odd sizes with output_padding
    (6, 4, 3, 1, 1, 0, 2, 1, 5, 7),  # groups
    (4, 6, 3, 2, 2, 1, 2, 2, 3, 4),  # groups, dilation, output_padding
]


def _deconv_modules(config, act, dtype=torch.float32, device="cpu", conv_bias=False):
    c_in, c_out, k, stride, padding, output_padding, groups, dilation, _, _ = config
    conv = nn.ConvTranspose2d(
        c_in, c_out, k, stride, padding, output_padding, groups, conv_bias, dilation, device=device, dtype=dtype
    )
    bn = _randomize_bn(nn.BatchNorm2d(c_out, momentum=0.2, device=device, dtype=dtype))
    return nn.Sequential(conv, bn, _activation_module(act))


def _deconv_step(block, x, backend=None, seed=0):
    """One forward/backward: the module sequence itself (backend None) or the fused op on its parameters."""
    x = x.detach().clone().requires_grad_(True)
    conv, bn = block[0], block[1]
    act = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.GLU: "glu", nn.Identity: "none"}[type(block[2])]
    if backend is None:
        out = block(x)
    else:
        with t2ifast.backend(backend):
            out = deconv_bn_act(
                x, conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, stride=conv.stride,
                padding=conv.padding, output_padding=conv.output_padding, groups=conv.groups, dilation=conv.dilation,
                training=bn.training, momentum=bn.momentum, eps=bn.eps, act=act, negative_slope=0.2,
            )  # fmt: skip
    grad = torch.randn(out.shape, generator=torch.Generator(device=x.device).manual_seed(seed), device=x.device)
    params = [conv.weight, bn.weight, bn.bias] + ([conv.bias] if conv.bias is not None else [])
    grads = torch.autograd.grad(out, [x, *params], grad.to(out.dtype))
    return [out.detach(), *grads, bn.running_mean.clone(), bn.running_var.clone()]


def _compare_deconv(backend, config, act, training, steps=1, conv_bias=False, rtol=1e-4, atol=1e-5):
    torch.manual_seed(0)
    reference = _deconv_modules(config, act, conv_bias=conv_bias).train(training)
    fused = _deconv_modules(config, act, conv_bias=conv_bias).train(training)
    fused.load_state_dict(reference.state_dict())
    c_in, h, w = config[0], config[8], config[9]
    for step in range(steps):
        x = torch.randn(3, c_in, h, w)
        _assert_all_close(
            _deconv_step(fused, x, backend, step), _deconv_step(reference, x, None, step), rtol=rtol, atol=atol
        )


@pytest.mark.parametrize("backend", ["reference", *CPU_BACKENDS])
@pytest.mark.parametrize("config", DECONV_CONFIGS, ids=str)
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "glu"])
def test_deconv_bn_act_train_matches_modules(backend, config, act):
    if act == "glu" and config[1] % 2:
        pytest.skip("GLU needs an even channel count")
    _compare_deconv(backend, config, act, training=True)


@pytest.mark.parametrize("backend", ["reference", *CPU_BACKENDS])
@pytest.mark.parametrize("config", DECONV_CONFIGS, ids=str)
def test_deconv_bn_act_eval_folding_matches_modules(backend, config):
    _compare_deconv(backend, config, "relu", training=False, conv_bias=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_several_training_steps_then_eval(backend):
    config = DECONV_CONFIGS[1]
    torch.manual_seed(1)
    reference = _deconv_modules(config, "relu")
    fused = _deconv_modules(config, "relu")
    fused.load_state_dict(reference.state_dict())
    for step in range(4):
        x = torch.randn(4, config[0], 4, 4) + step  # the statistics drift from step to step
        _assert_all_close(
            _deconv_step(fused, x, backend, step), _deconv_step(reference, x, None, step), rtol=1e-4, atol=1e-5
        )
    reference.eval()
    fused.eval()
    x = torch.randn(2, config[0], 4, 4)
    _assert_all_close(_deconv_step(fused, x, backend), _deconv_step(reference, x, None), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_fold_batch_norm_into_grouped_conv_transpose(groups):
    conv = nn.ConvTranspose2d(6, 12, 3, stride=2, padding=1, groups=groups, bias=True).double()
    bn = _randomize_bn(nn.BatchNorm2d(12).double()).eval()
    weight, bias = fold_batch_norm(
        conv.weight,
        conv.bias,
        bn.weight,
        bn.bias,
        bn.running_mean,
        bn.running_var,
        bn.eps,
        transposed=True,
        groups=groups,
    )
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    folded = F.conv_transpose2d(x, weight, bias, stride=2, padding=1, groups=groups)
    torch.testing.assert_close(folded, bn(conv(x)), rtol=1e-12, atol=1e-12)


def test_fold_batch_norm_into_conv2d():
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False).double()
    bn = _randomize_bn(nn.BatchNorm2d(6).double()).eval()
    weight, bias = fold_batch_norm(
        conv.weight, None, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps, transposed=False
    )
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(F.conv2d(x, weight, bias, padding=1, groups=2), bn(conv(x)), rtol=1e-12, atol=1e-12)


# --- the AttnGAN up-block --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", *CPU_BACKENDS])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_upsample_conv_bn_act_matches_modules(backend, training):
    torch.manual_seed(2)
    block = nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(4, 6, 3, 1, 1, bias=False),
        _randomize_bn(nn.BatchNorm2d(6)),
        nn.GLU(dim=1),
    ).train(training)
    conv, bn = block[1], block[2]
    running = (bn.running_mean.clone(), bn.running_var.clone())
    x = torch.randn(3, 4, 5, 3, requires_grad=True)
    with t2ifast.backend(backend):
        out = upsample_conv_bn_act(
            x, conv.weight, None, bn.weight, bn.bias, *running, training=training, momentum=bn.momentum, act="glu"
        )
    grads = torch.autograd.grad(out.square().sum(), [x, conv.weight, bn.weight, bn.bias])
    expected = block(x)
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, conv.weight, bn.weight, bn.bias])
    _assert_all_close(
        [out, *grads, *running], [expected, *expected_grads, bn.running_mean, bn.running_var], rtol=1e-4, atol=1e-5
    )


def _saved_storages(fn):
    """The shapes of the tensors autograd saves for backward while fn() runs, and fn()'s result."""
    shapes = []

    def pack(tensor):
        shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return shapes, out


@pytest.mark.parametrize(
    "scale_factor, conv", [(2, {"padding": 1}), (3, {"stride": 2, "padding": 0, "groups": 2, "dilation": 2})]
)
@pytest.mark.parametrize("bias", [True, False])
def test_upsample_conv_keeps_x_not_the_upsampled_tensor(scale_factor, conv, bias):
    torch.manual_seed(4)
    x = torch.randn(2, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 4 // conv.get("groups", 1), 3, 3, dtype=torch.float64, requires_grad=True)
    conv_bias = torch.randn(6, dtype=torch.float64, requires_grad=True) if bias else None
    args = {"stride": 1, "dilation": 1, "groups": 1, **conv}
    shapes, out = _saved_storages(lambda: upsample_conv2d(x, weight, conv_bias, scale_factor=scale_factor, **args))
    upsampled = F.interpolate(x, scale_factor=scale_factor, mode="nearest")
    assert tuple(upsampled.shape) not in shapes and tuple(x.shape) in shapes
    expected = F.conv2d(upsampled, weight, conv_bias, **args)
    inputs = [x, weight] + ([conv_bias] if bias else [])
    grad = torch.randn_like(out)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(
        torch.autograd.grad(out, inputs, grad), torch.autograd.grad(expected, inputs, grad), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # only some inputs need a gradient
    weight_only = torch.autograd.grad(
        upsample_conv2d(x.detach(), weight, None, scale_factor=scale_factor, **args), weight, grad
    )[0]
    torch.testing.assert_close(
        weight_only, torch.autograd.grad(F.conv2d(upsampled.detach(), weight, None, **args), weight, grad)[0]
    )


def test_upsample_conv_under_torch_compile():
    torch._dynamo.reset()
    torch.manual_seed(5)
    x = torch.randn(2, 4, 5, 3, requires_grad=True)
    weight = torch.randn(6, 4, 3, 3, requires_grad=True)

    def step(x, weight):
        out = upsample_conv2d(x, weight, None, scale_factor=2, stride=1, padding=1, dilation=1, groups=1)
        return out, *torch.autograd.grad(out.square().sum(), [x, weight])

    for got, want in zip(torch.compile(step)(x, weight), step(x, weight), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# --- gradcheck, opcheck, torch.compile ------------------------------------------------------------


# The Triton kernels are checked in float64 against the reference above (the interpreter is too slow for
# gradcheck's many evaluations); gradcheck runs the reference and the native kernels.
@pytest.mark.parametrize("backend", ["reference", *CPU_BACKENDS[:1]])
@pytest.mark.parametrize("act", ACTS)
def test_gradcheck_float64_train(backend, act):
    y = torch.randn(3, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    weight = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_(True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def fn(y, weight, bias):
        running = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
        with t2ifast.backend(backend):
            return bn_act(y, weight, bias, *running, training=True, act=act, negative_slope=0.3)

    assert torch.autograd.gradcheck(fn, (y, weight, bias))


@pytest.mark.parametrize("backend", ["reference", *CPU_BACKENDS[:1]])
@pytest.mark.parametrize("act", ["leaky_relu", "glu"])
def test_gradcheck_float64_eval_folded(backend, act):
    x = torch.randn(2, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)  # groups=2: C_out = 6
    bn_weight = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_(True)
    bn_bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    running = torch.randn(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64) + 0.5

    def fn(x, weight, bn_weight, bn_bias):
        with t2ifast.backend(backend):
            return deconv_bn_act(
                x, weight, None, bn_weight, bn_bias, *running, stride=2, padding=1, output_padding=1, groups=2,
                training=False, act=act,
            )  # fmt: skip

    assert torch.autograd.gradcheck(fn, (x, weight, bn_weight, bn_bias))


def _opcheck_all(suffix, device, test_utils=None):
    kwargs = {} if test_utils is None else {"test_utils": test_utils}
    ops = torch.ops.t2ifast
    for act in ACTS:
        y = torch.randn(3, 4, 5, 3, device=device, requires_grad=True)
        weight = torch.rand(4, device=device, requires_grad=True) + 0.5
        bias = torch.randn(4, device=device, requires_grad=True)
        mean, invstd = torch.randn(4, device=device), torch.rand(4, device=device) + 0.5
        grad_out = torch.randn((3, 2 if act == "glu" else 4, 5, 3), device=device)
        running = (torch.zeros(4, device=device), torch.ones(4, device=device))
        torch.library.opcheck(
            getattr(ops, f"bn_act_train{suffix}").default, (y, weight, bias, *running, 0.1, 1e-5, act, 0.2), **kwargs
        )
        backward_args = (grad_out, y.detach(), weight.detach(), bias.detach(), mean, invstd, act, 0.2)
        torch.library.opcheck(getattr(ops, f"bn_act_backward{suffix}").default, backward_args, **kwargs)
        torch.library.opcheck(getattr(ops, f"affine_act{suffix}").default, (y, weight, bias, act, 0.2), **kwargs)
        torch.library.opcheck(
            getattr(ops, f"affine_act_backward{suffix}").default,
            (grad_out, y.detach(), weight.detach(), bias.detach(), act, 0.2),
            **kwargs,
        )


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck_cpu(backend):
    if backend == "native":
        _opcheck_all("", "cpu")
    else:
        # The interpreter runs kernels eagerly on real memory: the AOT-tracing check runs on the GPU below.
        _opcheck_all("_triton", "cpu", test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("backend", ["reference", *CPU_BACKENDS[:1]])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_torch_compile_fullgraph(backend, training):
    torch._dynamo.reset()
    config = DECONV_CONFIGS[2]
    torch.manual_seed(3)
    block = _deconv_modules(config, "leaky_relu").train(training)
    compiled_block = _deconv_modules(config, "leaky_relu").train(training)
    compiled_block.load_state_dict(block.state_dict())
    x = torch.randn(3, config[0], config[8], config[9])
    step = torch.compile(_deconv_step, fullgraph=False)  # the step's autograd.grad is outside the graph
    got = step(compiled_block, x, backend)
    _assert_all_close(got, _deconv_step(block, x), rtol=1e-4, atol=1e-5)

    def forward(x, weight, bn_weight, bn_bias, running_mean, running_var):
        with t2ifast.backend(backend):
            return deconv_bn_act(
                x, weight, None, bn_weight, bn_bias, running_mean, running_var, stride=2, padding=1, output_padding=1,
                training=training, act="relu",
            )  # fmt: skip

    torch._dynamo.reset()
    conv, bn = block[0], block[1]
    running = bn.running_mean.clone(), bn.running_var.clone()
    compiled_running = bn.running_mean.clone(), bn.running_var.clone()
    out = torch.compile(forward, fullgraph=True)(x, conv.weight, bn.weight, bn.bias, *compiled_running)
    expected = forward(x, conv.weight, bn.weight, bn.bias, *running)
    _assert_all_close([out, *compiled_running], [expected, *running], rtol=1e-4, atol=1e-5)


# --- argument errors ------------------------------------------------------------------------------


def _bn_call(**overrides):
    args = {
        "y": torch.randn(2, 4, 3, 3),
        "weight": torch.ones(4),
        "bias": torch.zeros(4),
        "running_mean": torch.zeros(4),
        "running_var": torch.ones(4),
        "training": True,
    }
    args.update(overrides)
    y, weight, bias, running_mean, running_var = (
        args.pop(k) for k in ("y", "weight", "bias", "running_mean", "running_var")
    )
    return bn_act(y, weight, bias, running_mean, running_var, **args)


NO_BN_STATE = {"weight": None, "bias": None, "running_mean": None, "running_var": None}


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"act": "gelu"}, ValueError, "act must be one of"),
        ({"y": torch.randn(2, 3, 3, 3), "act": "glu", **NO_BN_STATE}, ValueError, "even channel count"),
        ({"weight": torch.ones(5)}, ValueError, r"weight must have shape \[4\]"),
        ({"momentum": 1.5}, ValueError, "momentum must be in"),
        ({"momentum": None}, ValueError, "momentum=None"),
        ({"running_mean": None, "running_var": None, "training": False}, ValueError, "eval mode"),
        ({"running_var": None}, ValueError, "given together"),
        ({"y": torch.randn(1, 4, 1, 1)}, ValueError, "more than 1 value per channel"),
        ({"bias": torch.zeros(4, dtype=torch.float64)}, TypeError, "bias has dtype torch.float64"),
    ],
)
def test_bad_arguments_are_named(overrides, error, message):
    with pytest.raises(error, match=message):
        _bn_call(**overrides)


def test_deconv_channel_mismatch_is_named():
    x = torch.randn(2, 5, 4, 4)
    with pytest.raises(ValueError, match="x has 5 channels but weight"):
        deconv_bn_act(x, torch.randn(4, 3, 4, 4), None, None, None, None, None, stride=2, padding=1, training=True)
    with pytest.raises(ValueError, match=r"bn_weight must have shape \[3\]"):
        deconv_bn_act(x[:, :4], torch.randn(4, 3, 4, 4), None, torch.ones(4), None, None, None, stride=2, padding=1,
                      training=True)  # fmt: skip
    for backend in ["reference", "native"]:  # every path validates before it computes
        with t2ifast.backend(backend), pytest.raises(ValueError, match="act must be one of"):
            deconv_bn_act(x[:, :4], torch.randn(4, 3, 4, 4), None, None, None, None, None, stride=2, padding=1,
                          training=True, act="gelu")  # fmt: skip


# --- on a GPU -----------------------------------------------------------------------------------

GPU_TOLERANCES = {torch.float32: {"rtol": 1e-4, "atol": 1e-4}, torch.bfloat16: {"rtol": 4e-2, "atol": 4e-2}}
CUDA_BACKENDS = kernel_backends(OP, "cuda") if HAS_CUDA else ["native", "triton"]


@requires_cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("dtype", list(GPU_TOLERANCES), ids=str)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", [(64, 512, 4, 4), (64, 64, 32, 32), (3, 6, 7, 5), (8, 16)], ids=str)
def test_bn_act_matches_reference_cuda(backend, dtype, act, shape):
    y = (torch.randn(shape, device="cuda") * 2 + 1).to(dtype)
    state = _bn_state(shape[1], dtype, "cuda")
    kwargs = {"training": True, "act": act}
    summed = y.numel() // y.shape[1]
    for kwargs in ({"training": True, "act": act}, {"training": False, "act": act}):
        got = _run_bn_act(backend, y, *state, **kwargs)
        # The reference in float32 on the same inputs and upstream gradient (BatchNorm evaluated in bfloat16
        # would itself round its statistics).
        expected = _run_bn_act("reference", y.float(), *(s.float() for s in state), grad_dtype=dtype, **kwargs)
        _assert_all_close([g.float() for g in got], expected, summed, **GPU_TOLERANCES[dtype])


@requires_cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_outputs_fully_written_cuda(backend):
    """Poisoned caching-allocator memory must not leak into results: run after filling freed blocks with NaN."""
    poison = torch.full((1 << 22,), float("nan"), device="cuda")
    del poison
    y = torch.randn(5, 6, 9, 7, device="cuda")
    state = _bn_state(6, torch.float32, "cuda")
    for act in ACTS:
        got = _run_bn_act(backend, y, *state, training=True, act=act)
        assert all(torch.isfinite(t).all() for t in got)


@requires_cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("config", DECONV_CONFIGS, ids=str)
def test_deconv_bn_act_matches_modules_cuda(backend, config):
    torch.manual_seed(0)
    for training in (True, False):
        reference = _deconv_modules(config, "relu", device="cuda").train(training)
        fused = _deconv_modules(config, "relu", device="cuda").train(training)
        fused.load_state_dict(reference.state_dict())
        x = torch.randn(4, config[0], config[8], config[9], device="cuda")
        _assert_all_close(_deconv_step(fused, x, backend), _deconv_step(reference, x), rtol=1e-4, atol=1e-4)


@requires_cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_opcheck_cuda(backend):
    _opcheck_all("" if backend == "native" else "_triton", "cuda")


@requires_cuda
@pytest.mark.parametrize("backend", ["reference", *CUDA_BACKENDS])
def test_torch_compile_fullgraph_cuda(backend):
    torch._dynamo.reset()

    def forward(y, weight, bias, running_mean, running_var):
        with t2ifast.backend(backend):
            return bn_act(y, weight, bias, running_mean, running_var, training=True, act="glu")

    y = torch.randn(8, 6, 5, 5, device="cuda", requires_grad=True)
    weight, bias, running_mean, running_var = _bn_state(6, torch.float32, "cuda")
    compiled_running = running_mean.clone(), running_var.clone()
    out = torch.compile(forward, fullgraph=True)(y, weight, bias, *compiled_running)
    expected = forward(y, weight, bias, running_mean, running_var)
    _assert_all_close([out, *compiled_running], [expected, running_mean, running_var], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", ACTS)
def test_automatic_choice_on_cpu_keeps_glu_on_the_reference(act):
    """GLU's C++ CPU kernel is slower than the reference (scalar exp): auto runs the reference for it on CPU, the
    kernel for the other activations; forcing native still runs the kernel for GLU."""
    y, state = torch.randn(4, 6, 5, 5), _bn_state(6)

    def kernel_ran():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            bn_act(y, *state, training=True, act=act)
        return "t2ifast::bn_act_train" in {event.name for event in profile.events()}

    native = _extension.has_native_kernel(OP, "cpu")
    assert kernel_ran() == (native and act != "glu")
    if native:
        with t2ifast.backend("native"):
            assert kernel_ran()
