"""Backend selection, forcing, and the build report."""

import os
import subprocess
import sys

import pytest
import torch

import t2ifast
from t2ifast import _backend, _extension
from t2ifast.ops import matching_aware_loss


def test_automatic_choice_prefers_native_then_reference_on_cpu():
    expected = "native" if _extension.has_native_kernel("matching_aware_loss", "cpu") else "reference"
    assert _backend.select("matching_aware_loss", "cpu") == expected


def _damsm_word_scores_call():
    words, regions, lengths = torch.randn(3, 8, 5), torch.randn(2, 8, 7), torch.tensor([5, 2, 1])
    return lambda: t2ifast.ops.damsm_word_scores(words, lengths, regions)


def _word_region_attention_call():
    regions, words = torch.randn(2, 8, 7), torch.randn(2, 8, 5)
    pad_mask = torch.tensor([[False] * 5, [False, False, True, True, True]])
    return lambda: t2ifast.ops.word_region_attention(regions, words, pad_mask)


@pytest.mark.parametrize(
    "op, call", [("damsm_word_scores", _damsm_word_scores_call), ("word_region_attention", _word_region_attention_call)]
)
def test_an_op_whose_cpu_kernel_is_slower_stays_on_the_reference_for_cpu_tensors_unless_forced(op, call):
    # these ops declare reference_on=("cpu", ...): auto picks the reference on CPU, native still when forced
    assert _backend.select(op, "cpu", reference_on=("cpu",)) == "reference"
    if _extension.has_native_kernel(op, "cuda"):
        assert _backend.select(op, "cuda", reference_on=("cpu",)) == "native"
        assert _backend.select(op, "cuda", reference_on=("cpu", "cuda")) == "reference"
    run = call()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as auto:
        run()
    assert f"t2ifast::{op}" not in {event.name for event in auto.events()}
    if _extension.has_native_kernel(op, "cpu"):
        with (
            t2ifast.backend("native"),
            torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as forced,
        ):
            run()
        assert f"t2ifast::{op}" in {event.name for event in forced.events()}


def test_automatic_choice_on_cuda_without_native_kernel_is_triton():
    # An op the extension does not hold runs on Triton for CUDA tensors, on the reference for CPU ones.
    if _backend.TRITON_AVAILABLE:
        assert _backend.select("an_op_without_native_kernel", "cuda") == "triton"
    assert _backend.select("an_op_without_native_kernel", "cuda", has_triton_kernel=False) == "reference"


def test_inputs_the_native_kernel_cannot_take_go_elsewhere_unless_native_is_forced():
    limit = "its kernel takes at most 64 of these"
    op = "matching_aware_loss"  # on CPU: the extension's kernel is there when the extension is
    assert _backend.select(op, "cpu", native_limit=limit) == "reference"  # automatic: Triton only on CUDA
    if _backend.TRITON_AVAILABLE:
        assert _backend.select(op, "cuda", native_limit=limit) == "triton"
    if _extension.has_native_kernel(op, "cpu"):
        with t2ifast.backend("native"), pytest.raises(t2ifast.BackendUnavailableError, match=limit):
            _backend.select(op, "cpu", native_limit=limit)
    with t2ifast.backend("reference"):
        assert _backend.select(op, "cpu", native_limit=limit) == "reference"


def test_context_manager_forces_and_restores():
    before = _backend.forced_backend()
    with t2ifast.backend("reference"):
        assert _backend.select("matching_aware_loss", "cpu") == "reference"
        with t2ifast.backend(None):
            assert _backend.forced_backend() is None
        assert _backend.forced_backend() == "reference"
    assert _backend.forced_backend() == before


def test_unknown_backend_name_is_an_error():
    with pytest.raises(ValueError, match="backend must be one of native, triton, reference; got 'cudnn'"):
        with t2ifast.backend("cudnn"):
            pass


def test_forced_backend_that_cannot_run_raises_instead_of_swapping():
    x = torch.randn(4)
    with t2ifast.backend("native"), pytest.raises(t2ifast.BackendUnavailableError, match="no CUDA kernel for"):
        _backend.select("an_op_without_native_kernel", "cuda")
    with t2ifast.backend("triton"), pytest.raises(t2ifast.BackendUnavailableError, match="has no Triton kernel"):
        _backend.select("some_op", "cpu", has_triton_kernel=False)
    with t2ifast.backend("reference"):
        matching_aware_loss(x, x, x)  # always available


def _run_python(code, **env):
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300)


def test_environment_variable_forces_backend_and_is_validated():
    ok = _run_python("import t2ifast._backend as b; print(b.forced_backend())", T2IFAST_BACKEND="reference")
    assert ok.stdout.strip() == "reference", ok.stderr
    bad = _run_python("import t2ifast", T2IFAST_BACKEND="fastest")
    assert bad.returncode != 0
    assert "T2IFAST_BACKEND must be one of native, triton, reference; got 'fastest'" in bad.stderr


def test_triton_on_cpu_without_interpreter_says_how_to_enable_it():
    code = (
        "import torch, t2ifast\n"
        "from t2ifast.ops import matching_aware_loss\n"
        "x = torch.randn(3)\n"
        "try:\n"
        "    with t2ifast.backend('triton'): matching_aware_loss(x, x, x)\n"
        "except t2ifast.BackendUnavailableError as e: print(e)\n"
    )
    result = _run_python(code, TRITON_INTERPRET="0")
    assert "TRITON_INTERPRET=1" in result.stdout, result.stderr


def test_info_reports_the_build_truthfully():
    result = subprocess.run([sys.executable, "-m", "t2ifast.info"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"torch          {torch.__version__}" in out
    if _extension.LOADED:
        assert ("CPU kernels run on torch's threads" in out) == _extension.CPU_KERNELS_THREADED
        devices = ", ".join(sorted(_extension.NATIVE_KERNELS["matching_aware_loss"]))
        assert f"{'matching_aware_loss':<32} kernels: {devices}" in out
    else:
        assert "extension      not available" in out
    assert ("gpu 0" in out) == torch.cuda.is_available()


def test_cpu_kernels_run_on_torchs_threads():
    """at::parallel_for is a header template: an extension compiled without OpenMP runs every CPU kernel on one
    thread. setup.py compiles with OpenMP wherever torch uses it on Linux."""
    if not _extension.LOADED:
        pytest.skip(f"the compiled extension is not available ({_extension.LOAD_ERROR})")
    if not (torch.backends.openmp.is_available() and sys.platform.startswith("linux")):
        pytest.skip("torch runs without OpenMP here, or not on Linux: setup.py builds without it")
    assert _extension.CPU_KERNELS_THREADED


def test_ci_build_has_cuda_kernels_when_required():
    """CI builds against a CUDA torch with nvcc: a silent CPU-only build must fail there."""
    if os.environ.get("T2IFAST_REQUIRE_CUDA_EXT") != "1":
        pytest.skip("T2IFAST_REQUIRE_CUDA_EXT is not set (only CI requires a CUDA build)")
    assert _extension.LOADED, _extension.LOAD_ERROR
    for op, devices in _extension.NATIVE_KERNELS.items():
        assert devices == {"cpu", "cuda"}, f"{op} lacks kernels: has {devices}"
