"""matching_aware_loss / generator_loss: every implementation against the reference."""

import pytest
import torch
from kernel_testing import HAS_CUDA, kernel_backends, random_logits, requires_cuda

import t2ifast
from t2ifast.ops import generator_loss, matching_aware_loss

OP = "matching_aware_loss"
# Training sizes: one block / program, one launch.
SIZES = [(1, 1, 1), (7, 7, 7), (5, 0, 9), (0, 0, 0), ((64, 1), (64, 1), (64, 1)), (3000, 2999, 3001)]
# Several Triton programs under the interpreter (16,384 logits per program, at most 4 x 4 stand-in SMs):
# 2 programs with a 13-logit group inside the last chunk; 5 with an empty wrong group; 16 (the cap, so each
# program walks more than its minimum chunk), a group of one and a 2-D group.
MULTI_PROGRAM_SIZES = [(20000, 7001, 13), (40000, 0, 30001), ((300, 500), 1, 170003)]


def _grads(backend, s_real, s_wrong, s_fake, **kwargs):
    """The four values and the gradients of a weighted sum of them (so every output's backward is used)."""
    inputs = [s.detach().clone().requires_grad_(True) for s in (s_real, s_wrong, s_fake)]
    with t2ifast.backend(backend):
        out = matching_aware_loss(*inputs, **kwargs)
    (out.loss + 0.3 * out.real - 0.7 * out.wrong + 1.1 * out.fake).backward()
    return torch.stack(list(out)).detach(), [s.grad for s in inputs]


def _check_against_reference(backend, shapes, device="cpu", dtype=torch.float32, rtol=1e-5, atol=1e-6, **kwargs):
    logits = [random_logits(shape, device=device, dtype=dtype) for shape in shapes]
    values, grads = _grads(backend, *logits, **kwargs)
    # low-precision kernels accumulate in float32: compare with the reference in float32 on the same inputs
    # (the reference evaluated in bfloat16 rounds its own intermediates)
    reference_dtype = torch.promote_types(dtype, torch.float32)
    ref_values, ref_grads = _grads("reference", *(s.to(reference_dtype) for s in logits), **kwargs)
    torch.testing.assert_close(values.to(reference_dtype), ref_values, rtol=rtol, atol=atol)
    for grad, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad.to(reference_dtype), ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", kernel_backends(OP, "cpu"))
@pytest.mark.parametrize("shapes", SIZES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_reference_cpu(backend, shapes, reduction):
    _check_against_reference(backend, shapes, reduction=reduction, smoothing=0.1)


@pytest.mark.parametrize("backend", kernel_backends(OP, "cpu"))
def test_extreme_logits_stay_finite(backend):
    x = torch.tensor([1e4, -1e4, 80.0, -80.0, 0.5], requires_grad=True)
    with t2ifast.backend(backend):
        out = matching_aware_loss(x, x, x)
        out.loss.backward()
    assert all(torch.isfinite(v) for v in out)
    assert torch.isfinite(x.grad).all()
    # real term: softplus(-x) averaged: (0 + 1e4 + 0 + 80 + softplus(-0.5)) / 5
    expected_real = (1e4 + 80.0 + torch.nn.functional.softplus(torch.tensor(-0.5)).item()) / 5
    torch.testing.assert_close(out.real, torch.tensor(expected_real), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("backend", kernel_backends(OP, "cpu"))
def test_generator_loss_matches_reference(backend):
    s_fake = random_logits((33,), requires_grad=True)
    with t2ifast.backend(backend):
        loss = generator_loss(s_fake)
    (grad,) = torch.autograd.grad(loss, s_fake)
    expected = torch.nn.functional.softplus(-s_fake.detach()).mean()
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(grad, (torch.sigmoid(s_fake.detach()) - 1) / 33)


def test_plain_gan_without_wrong_pairs_weights_fake_fully():
    s_real, s_fake = random_logits((9,)), random_logits((9,))
    with t2ifast.backend("reference"):
        out = matching_aware_loss(s_real, s_real.new_empty(0), s_fake)
    torch.testing.assert_close(out.loss, out.real + out.fake)
    assert out.wrong.item() == 0.0


@pytest.mark.parametrize("backend", ["reference", *kernel_backends(OP, "cpu")[:1]])
def test_gradcheck_float64(backend):
    inputs = [random_logits((n,), dtype=torch.float64, requires_grad=True) for n in (4, 3, 5)]

    def loss_and_terms(*args):
        with t2ifast.backend(backend):
            return tuple(matching_aware_loss(*args, smoothing=0.2))

    assert torch.autograd.gradcheck(loss_and_terms, inputs)


@pytest.mark.parametrize("backend", kernel_backends(OP, "cpu"))
def test_triton_and_native_agree_in_float64(backend):
    _check_against_reference(backend, (17, 17, 17), dtype=torch.float64, rtol=1e-12, atol=1e-12)


def _numel(shapes):
    return sum(torch.Size(shape if isinstance(shape, tuple) else (shape,)).numel() for shape in shapes)


def _triton_programs(shapes, device):
    from t2ifast.ops.matching_aware_loss import triton_kernel

    return triton_kernel.grid(_numel(shapes), triton_kernel.sm_count(torch.device(device)))[0]


TRITON_CPU = kernel_backends(OP, "cpu")[1:]


@pytest.mark.parametrize("backend", TRITON_CPU)
@pytest.mark.parametrize("shapes", MULTI_PROGRAM_SIZES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_multi_program_matches_reference(backend, shapes, reduction):
    assert _triton_programs(shapes, "cpu") > 1
    rtol = 1e-5 if reduction == "mean" else 2e-5  # sums of up to 170,003 float32 terms, in another order
    _check_against_reference(backend, shapes, reduction=reduction, smoothing=0.1, rtol=rtol)


@pytest.mark.parametrize("backend", TRITON_CPU)
@pytest.mark.parametrize("shapes", MULTI_PROGRAM_SIZES, ids=str)
def test_multi_program_float64(backend, shapes):
    _check_against_reference(backend, shapes, dtype=torch.float64, rtol=1e-12, atol=1e-12, smoothing=0.1)


@pytest.mark.parametrize("backend", TRITON_CPU)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shapes", [(2500, 10, 3100), (2048, 1024, 1000), (0, 3000, 5)], ids=str)
def test_many_small_programs(backend, dtype, shapes, monkeypatch):
    """A program per 1,024 logits and 4 partial sums per finish-kernel step: chunks that start inside a
    group, a group inside one chunk, chunk edges on group edges, an empty first group, and a finish kernel
    that loops with a masked tail."""
    from t2ifast.ops.matching_aware_loss import triton_kernel

    monkeypatch.setattr(triton_kernel, "ELEMENTS_PER_PROGRAM", triton_kernel.BLOCK)
    monkeypatch.setattr(triton_kernel, "INTERPRETER_SM_COUNT", 64)
    monkeypatch.setattr(triton_kernel, "PARTIALS_BLOCK", 4)
    assert _triton_programs(shapes, "cpu") >= 3
    tolerances = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    _check_against_reference(backend, shapes, dtype=dtype, smoothing=0.1, **tolerances)
    _check_against_reference(backend, shapes, dtype=dtype, reduction="sum", **tolerances)


def _check_deterministic(backend, shapes, device):
    logits = [random_logits(shape, device=device) for shape in shapes]
    first_values, first_grads = _grads(backend, *logits, smoothing=0.1)
    values, grads = _grads(backend, *logits, smoothing=0.1)
    assert torch.equal(values, first_values)
    for grad, first in zip(grads, first_grads, strict=True):
        assert torch.equal(grad, first)


@pytest.mark.parametrize("backend", TRITON_CPU)
def test_multi_program_is_deterministic(backend):
    shapes = MULTI_PROGRAM_SIZES[-1]
    assert _triton_programs(shapes, "cpu") > 1
    _check_deterministic(backend, shapes, "cpu")


@pytest.mark.parametrize("sms", [1, 4, 132])
def test_triton_grid(sms):
    """1 program up to ELEMENTS_PER_PROGRAM logits, then more, never more than PROGRAMS_PER_SM per SM,
    chunks of whole BLOCKs that cover everything and leave no program empty."""
    pytest.importorskip("triton")
    from t2ifast.ops.matching_aware_loss import triton_kernel as tk

    for total in [0, 1, 3, 192, 9000, tk.ELEMENTS_PER_PROGRAM, tk.ELEMENTS_PER_PROGRAM + 1, 70001, 3 << 20, 10**9]:
        programs, chunk = tk.grid(total, sms)
        assert (programs == 1) == (total <= tk.ELEMENTS_PER_PROGRAM), total
        assert 1 <= programs <= tk.PROGRAMS_PER_SM * sms
        assert chunk % tk.BLOCK == 0
        assert programs * chunk >= total
        assert total == 0 or (programs - 1) * chunk < total
    assert tk.grid(3 << 20, 132) == (192, tk.ELEMENTS_PER_PROGRAM)  # the 1M-per-group benchmark on an H200
    assert tk.sm_count(torch.device("cpu")) == tk.INTERPRETER_SM_COUNT


def _opcheck(op_name, device, test_utils=None):
    op = getattr(torch.ops.t2ifast, op_name).default
    for shapes in [(8, 8, 8), (1, 0, 3), (20000, 7001, 13)]:  # the last: several blocks / programs
        args = [random_logits((n,), device=device, requires_grad=True) for n in shapes]
        kwargs = {} if test_utils is None else {"test_utils": test_utils}
        torch.library.opcheck(op, (*args, 0.9, True), **kwargs)


@pytest.mark.parametrize("backend", kernel_backends(OP, "cpu"))
def test_opcheck_cpu(backend):
    if backend == "native":
        _opcheck("matching_aware_loss", "cpu")
    else:
        # The interpreter runs kernels eagerly on real memory, so the AOT-tracing check (which runs the
        # op on fake tensors to see inside it) only applies to compiled Triton: it runs on the GPU below.
        _opcheck(
            "matching_aware_loss_triton",
            "cpu",
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
        )


@pytest.mark.parametrize("backend", ["reference", *kernel_backends(OP, "cpu")[:1]])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()

    def step(s_real, s_wrong, s_fake):
        with t2ifast.backend(backend):
            return matching_aware_loss(s_real, s_wrong, s_fake, smoothing=0.1).loss

    compiled = torch.compile(step, fullgraph=True)
    inputs = [random_logits((16,), requires_grad=True) for _ in range(3)]
    loss = compiled(*inputs)
    grads = torch.autograd.grad(loss, inputs)
    ref_inputs = [s.detach().clone().requires_grad_(True) for s in inputs]
    ref_loss = step(*ref_inputs)
    ref_grads = torch.autograd.grad(ref_loss, ref_inputs)
    torch.testing.assert_close(loss, ref_loss)
    for grad, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"smoothing": 1.0}, "smoothing must be in"),
        ({"reduction": "none"}, "reduction must be one of"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    x = random_logits((4,))
    with pytest.raises(ValueError, match=message):
        matching_aware_loss(x, x, x, **kwargs)


def test_mismatched_inputs_are_named():
    x = random_logits((4,))
    with pytest.raises(TypeError, match=r"s_wrong has dtype torch\.float64"):
        matching_aware_loss(x, x.double(), x)
    with pytest.raises(TypeError, match="s_fake must be a floating-point tensor"):
        matching_aware_loss(x, x, torch.ones(4, dtype=torch.long))


# --- on a GPU -----------------------------------------------------------------------------------

GPU_TOLERANCES = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (2e-2, 1e-2)}


@requires_cuda
@pytest.mark.parametrize("backend", kernel_backends(OP, "cuda") if HAS_CUDA else ["native", "triton"])
@pytest.mark.parametrize("dtype", list(GPU_TOLERANCES), ids=str)
@pytest.mark.parametrize("shapes", SIZES, ids=str)
def test_matches_reference_cuda(backend, dtype, shapes):
    rtol, atol = GPU_TOLERANCES[dtype]
    _check_against_reference(backend, shapes, device="cuda", dtype=dtype, rtol=rtol, atol=atol, smoothing=0.1)


# Several blocks / programs on the GPU (16,384 logits per block, at most 4 per SM): 2; 5 with an empty
# group; the 1M-per-group benchmark (192 on an H200); 9M logits, past the cap (528 on an H200, so the
# finish kernels sum more partials than they have threads / lanes).
MULTI_BLOCK_SIZES_CUDA = [*MULTI_PROGRAM_SIZES, (1 << 20, 1 << 20, 1 << 20), (5_000_000, 3_000_001, 1_000_003)]
MULTI_BLOCK_TOLERANCES = {**GPU_TOLERANCES, torch.float64: (1e-11, 1e-12)}


@requires_cuda
@pytest.mark.parametrize("backend", kernel_backends(OP, "cuda") if HAS_CUDA else ["native", "triton"])
@pytest.mark.parametrize("dtype", list(MULTI_BLOCK_TOLERANCES), ids=str)
@pytest.mark.parametrize("shapes", MULTI_BLOCK_SIZES_CUDA, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_multi_block_matches_reference_cuda(backend, dtype, shapes, reduction):
    if backend == "triton":
        assert _triton_programs(shapes, "cuda") > 1
    rtol, atol = MULTI_BLOCK_TOLERANCES[dtype]
    if reduction == "sum" and dtype == torch.float32:
        rtol = 2e-5  # sums of up to 5M terms, in another order than the reference's
    kwargs = {"smoothing": 0.1, "reduction": reduction}
    _check_against_reference(backend, shapes, device="cuda", dtype=dtype, rtol=rtol, atol=atol, **kwargs)


@requires_cuda
@pytest.mark.parametrize("backend", kernel_backends(OP, "cuda") if HAS_CUDA else ["native", "triton"])
@pytest.mark.parametrize("shapes", MULTI_BLOCK_SIZES_CUDA[-2:], ids=str)
def test_multi_block_is_deterministic_cuda(backend, shapes):
    _check_deterministic(backend, shapes, "cuda")


@requires_cuda
@pytest.mark.parametrize("backend", ["reference", *(kernel_backends(OP, "cuda") if HAS_CUDA else [])])
@pytest.mark.parametrize("size", [64, 1 << 18])  # one block; several blocks and the finish kernel
def test_torch_compile_fullgraph_cuda(backend, size):
    torch._dynamo.reset()

    def loss_fn(s_real, s_wrong, s_fake):
        with t2ifast.backend(backend):
            return matching_aware_loss(s_real, s_wrong, s_fake).loss

    inputs = [random_logits((size,), device="cuda", requires_grad=True) for _ in range(3)]
    loss = torch.compile(loss_fn, fullgraph=True)(*inputs)
    torch.testing.assert_close(loss, loss_fn(*inputs))


@requires_cuda
@pytest.mark.parametrize("backend", kernel_backends(OP, "cuda") if HAS_CUDA else ["native", "triton"])
def test_opcheck_cuda(backend):
    _opcheck("matching_aware_loss" if backend == "native" else "matching_aware_loss_triton", "cuda")
