"""Helpers for testing an op's implementations against its reference."""

import os

import pytest
import torch

from t2ifast import _backend

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine")


def kernel_backends(op, device_type, *, has_triton_kernel=True):
    """pytest params for the non-reference backends of `op` on `device_type`. A backend that cannot run
    is a skip that names the reason; with T2IFAST_REQUIRE_EXT=1 (CI) a missing native kernel fails instead."""
    params = []
    for name in ("native", "triton"):
        reason = _backend._why_unavailable(name, op, device_type, has_triton_kernel)
        required = name == "native" and os.environ.get("T2IFAST_REQUIRE_EXT") == "1"
        marks = [] if reason is None or required else [pytest.mark.skip(reason=reason)]
        params.append(pytest.param(name, id=name, marks=marks))
    return params


def random_logits(shape, *, scale=3.0, dtype=torch.float32, device="cpu", requires_grad=False):
    """Fresh random logits, never zeros: a normal spread wide enough to reach both saturated ends."""
    x = torch.randn(shape, dtype=dtype, device=device) * scale
    return x.requires_grad_(requires_grad)
