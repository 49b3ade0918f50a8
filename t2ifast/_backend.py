"""Which implementation of an op runs: ``native`` (the compiled extension), ``triton`` or ``reference``.

Per call, unless a backend is forced: native where the extension has the op's kernel for the tensor's
device (on CPU tensors only where that kernel is not slower than the reference: see `select`), else Triton on
CUDA tensors, else the reference. ``T2IFAST_BACKEND`` (read at import) or
``with t2ifast.backend(name):`` forces one; a forced backend that cannot run raises
``BackendUnavailableError`` instead of quietly running another.
"""

import contextlib
import importlib.util
import os

from t2ifast import _extension

BACKENDS = ("native", "triton", "reference")


class BackendUnavailableError(RuntimeError):
    """The backend asked for cannot run this op on these tensors."""


def _triton_state():
    """(importable, runs on CPU tensors): Triton runs CPU tensors only in its interpreter, which it
    chooses when a kernel is defined, so TRITON_INTERPRET=1 must be set before t2ifast is imported."""
    if importlib.util.find_spec("triton") is None:
        return False, False
    return True, os.environ.get("TRITON_INTERPRET", "0") == "1"


TRITON_AVAILABLE, TRITON_INTERPRETED = _triton_state()


def _check_name(name, source):
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name


_forced = os.environ.get("T2IFAST_BACKEND") or None
if _forced is not None:
    _check_name(_forced, "T2IFAST_BACKEND")


@contextlib.contextmanager
def backend(name):
    """Force one backend inside the block: ``with t2ifast.backend("reference"): ...``.
    ``None`` restores automatic selection."""
    global _forced
    if name is not None:
        _check_name(name, "backend")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def forced_backend():
    return _forced


def _why_unavailable(name, op, device_type, has_triton_kernel):
    """None when backend `name` can run `op` on `device_type` tensors, else the reason."""
    if name == "native":
        if not _extension.LOADED:
            return f"the compiled extension is not available ({_extension.LOAD_ERROR})"
        if not _extension.has_native_kernel(op, device_type):
            return f"the compiled extension has no {device_type.upper()} kernel for {op}"
    elif name == "triton":
        if not has_triton_kernel:
            return f"{op} has no Triton kernel"
        if not TRITON_AVAILABLE:
            return "triton is not installed"
        if device_type == "cpu" and not TRITON_INTERPRETED:
            return "Triton runs CPU tensors only under TRITON_INTERPRET=1 (set before importing t2ifast)"
        if device_type not in ("cpu", "cuda"):
            return f"Triton does not run on {device_type} tensors"
    return None


def select(op, device_type, *, has_triton_kernel=True, reference_on=(), native_limit=None):
    """The backend that runs `op` on tensors of `device_type` ("cpu", "cuda", ...). ``reference_on``: the device
    types on which the op's fused kernels were measured slower than its reference; automatic selection keeps
    their tensors on the reference, a forced backend still runs. ``native_limit``: why the native kernel cannot
    take these particular inputs (None when it can); automatic selection then passes native over, and forcing
    native raises with that reason."""
    if _forced is not None:
        reason = _why_unavailable(_forced, op, device_type, has_triton_kernel)
        if reason is None and _forced == "native":
            reason = native_limit
        if reason is not None:
            raise BackendUnavailableError(f"backend {_forced!r} was asked for {op} on {device_type}, but {reason}")
        return _forced
    if device_type in reference_on:
        return "reference"
    if native_limit is None and _why_unavailable("native", op, device_type, has_triton_kernel) is None:
        return "native"
    if device_type == "cuda" and _why_unavailable("triton", op, device_type, has_triton_kernel) is None:
        return "triton"
    return "reference"
