"""A TORCH_CHECK that fails inside a compiled kernel's host code reaches Python as a RuntimeError.

On the H200 (2026-11-24) the native CUDA attention's T <= 64 check killed the process with SIGSEGV instead;
the cause was not found (the op now refuses T > 64 in Python first). Each case here calls a native op
directly, past the Python checks, in a child process: a crash fails only its own test, with the signal and
the child's last output in the message.
"""

import subprocess
import sys
import textwrap

import pytest
from kernel_testing import requires_cuda

from t2ifast import _extension

# (op, device, what the call does, the error text expected)
CASES = {
    "bn_act_train_bad_act": (
        "bn_act_train",
        """
        y = torch.randn(2, 4, 3, 3, device=DEVICE)
        params = [torch.ones(4, device=DEVICE), torch.zeros(4, device=DEVICE)]
        torch.ops.t2ifast.bn_act_train(y, *params, torch.zeros(4, device=DEVICE), torch.ones(4, device=DEVICE),
                                       0.1, 1e-5, "bogus", 0.2)
        """,
        "act must be one of",
    ),
    "word_region_attention_too_many_words": (
        "word_region_attention",
        """
        regions, words = torch.randn(2, 4, 10, device=DEVICE), torch.randn(2, 4, 70, device=DEVICE)
        torch.ops.t2ifast.word_region_attention(regions, words, None, False)
        """,
        "at most 64 words",
    ),
    "damsm_word_scores_bad_lengths": (
        "damsm_word_scores",
        """
        words, regions = torch.randn(3, 8, 5, device=DEVICE), torch.randn(2, 8, 7, device=DEVICE)
        lengths = torch.ones(2, dtype=torch.long, device=DEVICE)  # 2 lengths for 3 captions
        torch.ops.t2ifast.damsm_word_scores(words, lengths, regions, 4.0, 5.0)
        """,
        "lengths",
    ),
}
# word_region_attention's T limit exists in the CUDA kernel only: the CPU kernel takes any T
CPU_CASES = [name for name in CASES if name != "word_region_attention_too_many_words"]


def _child(device, body):
    """The child's script: the call, and what it raised."""
    call = textwrap.indent(textwrap.dedent(body).strip(), "    ")
    return "\n".join(
        [
            "import torch",
            "import t2ifast",
            f"DEVICE = {device!r}",
            "try:",
            call,
            "except RuntimeError as error:",
            "    print('RuntimeError:', error)",
            "else:",
            "    print('no error')",
        ]
    )


def _assert_runtime_error(name, device):
    op, body, expected = CASES[name]
    if not _extension.has_native_kernel(op, device):
        pytest.skip(f"the extension has no {device} kernel of {op}")
    child = subprocess.run([sys.executable, "-c", _child(device, body)], capture_output=True, text=True, timeout=300)
    output = (child.stdout + child.stderr)[-2000:]
    assert child.returncode == 0, f"the child process ended with {child.returncode} (negative: the signal):\n{output}"
    assert "RuntimeError:" in child.stdout and expected in child.stdout, output


@pytest.mark.parametrize("name", CPU_CASES)
def test_cpu_kernel_errors_are_runtime_errors(name):
    _assert_runtime_error(name, "cpu")


@requires_cuda
@pytest.mark.parametrize("name", list(CASES))
def test_cuda_kernel_errors_are_runtime_errors_cuda(name):
    _assert_runtime_error(name, "cuda")
