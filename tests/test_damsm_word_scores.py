"""damsm_word_scores and the DAMSM losses: every implementation against the reference, the reference
against the AttnGAN-style per-caption loop."""

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import HAS_CUDA, kernel_backends, requires_cuda

import t2ifast
from t2ifast.losses import damsm_sentence_loss, damsm_word_loss, matching_cross_entropy
from t2ifast.ops import damsm_word_scores, damsm_word_scores_loop

OP = "damsm_word_scores"

# (B captions, M images, D, T, N, lengths): N past one chunk of regions (16 in the Triton kernels) and not a
# multiple of it, D not a power of two (D = 20, 24: two slices of 16 rows in the Triton products over D, the
# second short), T = 1, B = M = 1, lengths of 1, M != B; the last has five images, so without a GPU the Triton
# backward's phase C has three image blocks of two, the last one short.
CASES = [
    (3, 4, 20, 6, 37, [6, 1, 3]),
    (1, 1, 16, 1, 5, [1]),
    (4, 2, 12, 5, 70, [2, 5, 1, 4]),
    (2, 5, 20, 3, 50, [3, 2]),
]


def _inputs(B, M, D, T, N, lengths, *, device="cpu", dtype=torch.float32):
    words = torch.randn(B, D, T, device=device, dtype=dtype)
    regions = torch.randn(M, D, N, device=device, dtype=dtype) * 0.3
    return words, torch.tensor(lengths, device=device), regions


def _scores_and_grads(fn, words, lengths, regions, grad, upcast=False):
    w = words.detach().clone().requires_grad_(True)
    r = regions.detach().clone().requires_grad_(True)
    scores = fn(w.double() if upcast else w, lengths, r.double() if upcast else r)
    gw, gr = torch.autograd.grad((scores * grad.to(scores.dtype)).sum(), (w, r))
    return scores.detach(), gw, gr


def _with_backend(backend):
    def fn(words, lengths, regions):
        with t2ifast.backend(backend):
            return damsm_word_scores(words, lengths, regions, gamma1=4.0, gamma2=5.0)

    return fn


def _loop(words, lengths, regions):
    return damsm_word_scores_loop(words, lengths, regions, 4.0, 5.0)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_reference_matches_attngan_loop(case):
    words, lengths, regions = _inputs(*case, dtype=torch.float64)
    grad = torch.randn(case[1], case[0], dtype=torch.float64)
    got = _scores_and_grads(_with_backend("reference"), words, lengths, regions, grad)
    want = _scores_and_grads(_loop, words, lengths, regions, grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_padding_words_do_not_matter():
    words, lengths, regions = _inputs(*CASES[0])
    changed = words.clone()
    changed[1, :, 1:] = torch.randn_like(changed[1, :, 1:])  # caption 1 has one valid word
    with t2ifast.backend("reference"):
        torch.testing.assert_close(
            damsm_word_scores(words, lengths, regions), damsm_word_scores(changed, lengths, regions)
        )


@pytest.mark.parametrize("backend", kernel_backends(OP, "cpu"))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference_cpu(backend, case):
    words, lengths, regions = _inputs(*case)
    grad = torch.randn(case[1], case[0])
    got = _scores_and_grads(_with_backend(backend), words, lengths, regions, grad)
    want = _scores_and_grads(_with_backend("reference"), words, lengths, regions, grad, upcast=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", *kernel_backends(OP, "cpu")])
def test_int32_lengths(backend):
    words, lengths, regions = _inputs(*CASES[0])
    fn = _with_backend(backend)
    torch.testing.assert_close(fn(words, lengths.int(), regions), fn(words, lengths, regions))


@pytest.mark.parametrize("backend", kernel_backends(OP, "cpu"))
def test_non_contiguous_inputs(backend):
    words = torch.randn(3, 6, 20).transpose(1, 2)  # [B, D=20, T=6]
    regions = (torch.randn(2, 37, 20) * 0.3).transpose(1, 2)  # [M, D=20, N=37]
    lengths = torch.tensor([[6, 0], [2, 0], [1, 0]])[:, 0]
    assert not (words.is_contiguous() or regions.is_contiguous() or lengths.is_contiguous())
    grad = torch.randn(2, 3)
    got = _scores_and_grads(_with_backend(backend), words, lengths, regions, grad)
    want = _scores_and_grads(_with_backend("reference"), words.contiguous(), lengths, regions.contiguous(), grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", *kernel_backends(OP, "cpu")[:1]])
def test_gradcheck_float64(backend):
    words, lengths, regions = _inputs(2, 3, 5, 4, 7, [4, 2], dtype=torch.float64)
    words.requires_grad_(True)
    regions.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w, r: _with_backend(backend)(w, lengths, r), (words, regions))


@pytest.mark.parametrize("backend", kernel_backends(OP, "cpu"))
def test_kernels_match_reference_float64(backend):
    """float64 inputs are computed in float64 throughout (the Triton kernels too), so forward and backward
    agree with the float64 reference to rounding."""
    case = (5, 3, 24, 7, 45, [7, 1, 3, 6, 2])
    words, lengths, regions = _inputs(*case, dtype=torch.float64)
    grad = torch.randn(3, 5, dtype=torch.float64)
    got = _scores_and_grads(_with_backend(backend), words, lengths, regions, grad)
    want = _scores_and_grads(_with_backend("reference"), words, lengths, regions, grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("backend", kernel_backends(OP, "cpu")[1:])
def test_triton_backward_is_deterministic(backend):
    """The Triton backward adds with no atomics, in a fixed order: two runs give the same bits."""
    words, lengths, regions = _inputs(*CASES[3])
    grad = torch.randn(CASES[3][1], CASES[3][0])
    first = _scores_and_grads(_with_backend(backend), words, lengths, regions, grad)
    second = _scores_and_grads(_with_backend(backend), words, lengths, regions, grad)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", kernel_backends(OP, "cpu"))
def test_opcheck_cpu(backend):
    words, lengths, regions = _inputs(*CASES[0])
    words.requires_grad_(True)
    regions.requires_grad_(True)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")  # no AOT tracing of the interpreter
    name = "damsm_word_scores" if backend == "native" else "damsm_word_scores_triton"
    kwargs = {} if backend == "native" else {"test_utils": utils}
    torch.library.opcheck(getattr(torch.ops.t2ifast, name).default, (words, lengths, regions, 4.0, 5.0), **kwargs)
    backward = getattr(torch.ops.t2ifast, name.replace("scores", "scores_backward")).default
    args = (torch.randn(4, 3), words.detach(), lengths, regions.detach(), 4.0, 5.0)
    torch.library.opcheck(backward, args, **kwargs)


@pytest.mark.parametrize("backend", ["reference", *kernel_backends(OP, "cpu")[:1]])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    words, lengths, regions = _inputs(*CASES[0])
    words.requires_grad_(True)
    fn = _with_backend(backend)
    scores = torch.compile(fn, fullgraph=True)(words, lengths, regions)
    (grad,) = torch.autograd.grad(scores.sum(), words)
    want = fn(words, lengths, regions)
    (want_grad,) = torch.autograd.grad(want.sum(), words)
    torch.testing.assert_close(scores, want)
    torch.testing.assert_close(grad, want_grad)


def test_bad_arguments_are_named():
    words, lengths, regions = _inputs(*CASES[0])
    with pytest.raises(ValueError, match=r"regions must be \[M, D, N\] = \[M, 20, N\]"):
        damsm_word_scores(words, lengths, regions[:, :5])
    with pytest.raises(ValueError, match=r"lengths must be \[B\] = \[3\]"):
        damsm_word_scores(words, lengths[:2], regions)
    with pytest.raises(TypeError, match="lengths must be an int32 or int64 tensor"):
        damsm_word_scores(words, lengths.float(), regions)
    with pytest.raises(ValueError, match=r"words must be \[B, D, T\]"):
        damsm_word_scores(words[0], lengths, regions)


# --- the losses ----------------------------------------------------------------------------------


def _attngan_cross_entropies(similarities, class_ids):
    """AttnGAN's recipe: similarities[image, caption] * gamma3 already; same-class mismatches to -inf."""
    B = similarities.shape[0]
    if class_ids is not None:
        mask = torch.tensor([[class_ids[i] == class_ids[k] and i != k for k in range(B)] for i in range(B)])
        similarities = similarities.masked_fill(mask, float("-inf"))
    labels = torch.arange(B)
    return F.cross_entropy(similarities, labels), F.cross_entropy(similarities.T, labels)


@pytest.mark.parametrize("class_ids", [None, [1, 2, 1, 3]], ids=["no_classes", "classes"])
def test_word_loss_matches_attngan_recipe(class_ids):
    words, lengths, regions = _inputs(4, 4, 12, 5, 20, [2, 5, 1, 4], dtype=torch.float64)
    loss = damsm_word_loss(words, lengths, regions, class_ids=class_ids, gamma3=10.0)
    expected = _attngan_cross_entropies(10.0 * _loop(words, lengths, regions), class_ids)
    torch.testing.assert_close(loss.images, expected[0])
    torch.testing.assert_close(loss.captions, expected[1])


def test_class_ids_exclude_same_class_mismatches():
    """Scores of mismatched pairs of one class (image 0 / caption 2 and image 2 / caption 0 here) do not count."""
    scores = torch.randn(4, 4, dtype=torch.float64)
    class_ids = torch.tensor([7, 8, 7, 9])
    changed = scores.clone()
    changed[0, 2], changed[2, 0] = 50.0, -3.0
    base = matching_cross_entropy(scores, class_ids)
    torch.testing.assert_close(matching_cross_entropy(changed, class_ids), base)
    assert not torch.allclose(matching_cross_entropy(changed).images, matching_cross_entropy(scores).images)
    changed[0, 1] = 50.0  # a different-class mismatch does count
    assert not torch.allclose(matching_cross_entropy(changed, class_ids).images, base.images)


@pytest.mark.parametrize("class_ids", [None, [1, 2, 1, 3, 2]], ids=["no_classes", "classes"])
def test_sentence_loss_matches_attngan_recipe(class_ids):
    image_codes, sentence_codes = torch.randn(5, 16, dtype=torch.float64), torch.randn(5, 16, dtype=torch.float64)
    loss = damsm_sentence_loss(image_codes, sentence_codes, class_ids=class_ids, gamma3=10.0)
    cos = F.cosine_similarity(image_codes[:, None, :], sentence_codes[None, :, :], dim=2)
    expected = _attngan_cross_entropies(10.0 * cos, class_ids)
    torch.testing.assert_close(loss.images, expected[0])
    torch.testing.assert_close(loss.captions, expected[1])


# --- on a GPU -----------------------------------------------------------------------------------

# fp32 (the Triton kernels' products in three TF32 passes, about fp32's accuracy), compared with the float64
# reference; the last case is the benchmark's shape.
GPU_CASES = [*CASES, (48, 48, 256, 18, 289, [18, 1, *range(2, 18), *range(18, 2, -1), *([10] * 14)])]


def test_gpu_cases_give_one_length_per_caption():  # checked here too, so a bad case shows before a GPU run
    for B, _M, _D, T, _N, lengths in GPU_CASES:
        assert len(lengths) == B and all(1 <= n <= T for n in lengths)


@requires_cuda
@pytest.mark.parametrize("backend", kernel_backends(OP, "cuda") if HAS_CUDA else ["native", "triton"])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: str(c[:5]))
def test_matches_reference_cuda(backend, case):
    words, lengths, regions = _inputs(*case, device="cuda")
    grad = torch.randn(case[1], case[0], device="cuda")
    got = _scores_and_grads(_with_backend(backend), words, lengths, regions, grad)
    want = _scores_and_grads(_with_backend("reference"), words, lengths, regions, grad, upcast=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-4)


@requires_cuda
@pytest.mark.parametrize("backend", kernel_backends(OP, "cuda") if HAS_CUDA else ["native", "triton"])
def test_bfloat16_cuda(backend):
    """bf16 inputs (the kernels compute in fp32): compared with the float64 reference on the same inputs."""
    words, lengths, regions = _inputs(*CASES[2], device="cuda", dtype=torch.bfloat16)
    grad = torch.randn(CASES[2][1], CASES[2][0], device="cuda", dtype=torch.bfloat16)
    got = _scores_and_grads(_with_backend(backend), words, lengths, regions, grad)
    want = _scores_and_grads(_with_backend("reference"), words, lengths, regions, grad, upcast=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w.to(g.dtype), rtol=3e-2, atol=3e-2)


@requires_cuda
@pytest.mark.parametrize("backend", kernel_backends(OP, "cuda") if HAS_CUDA else ["native", "triton"])
def test_opcheck_and_compile_cuda(backend):
    words, lengths, regions = _inputs(*CASES[0], device="cuda")
    words.requires_grad_(True)
    regions.requires_grad_(True)
    name = "damsm_word_scores" if backend == "native" else "damsm_word_scores_triton"
    torch.library.opcheck(getattr(torch.ops.t2ifast, name).default, (words, lengths, regions, 4.0, 5.0))
    torch._dynamo.reset()
    fn = _with_backend(backend)
    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(words, lengths, regions), fn(words, lengths, regions))


@requires_cuda
@pytest.mark.parametrize("backend", kernel_backends(OP, "cuda")[1:] if HAS_CUDA else ["triton"])
@pytest.mark.parametrize("case", [CASES[3], GPU_CASES[-1]], ids=lambda c: str(c[:5]))
def test_float64_cuda(backend, case):
    """float64 inputs are computed in float64 with exact products: forward and backward to rounding."""
    words, lengths, regions = _inputs(*case, device="cuda", dtype=torch.float64)
    grad = torch.randn(case[1], case[0], device="cuda", dtype=torch.float64)
    got = _scores_and_grads(_with_backend(backend), words, lengths, regions, grad)
    want = _scores_and_grads(_with_backend("reference"), words, lengths, regions, grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@requires_cuda
@pytest.mark.parametrize("backend", kernel_backends(OP, "cuda")[1:] if HAS_CUDA else ["triton"])
def test_backward_deterministic_cuda(backend):
    """No atomics in the Triton backward: two runs at the benchmark's shape give the same bits."""
    case = GPU_CASES[-1]
    words, lengths, regions = _inputs(*case, device="cuda")
    grad = torch.randn(case[1], case[0], device="cuda")
    first = _scores_and_grads(_with_backend(backend), words, lengths, regions, grad)
    second = _scores_and_grads(_with_backend(backend), words, lengths, regions, grad)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
