"""Loads the compiled operator library ``t2ifast._C`` once and records which kernels it holds.

Everything here is computed at import time so that backend selection is a lookup in constant
tables, which ``torch.compile`` can trace without a graph break.
"""

import importlib.util
import warnings

import torch


class ExtensionNotBuiltWarning(UserWarning):
    """t2ifast runs without its compiled kernels (reference and Triton paths only)."""


def _load():
    if importlib.util.find_spec("t2ifast._C") is None:
        return False, "t2ifast was installed without it"
    try:
        from t2ifast import _C  # noqa: F401 - importing it runs the TORCH_LIBRARY registrations
    except (ImportError, OSError) as error:
        return False, f"{type(error).__name__}: {error}"
    return True, None


LOADED, LOAD_ERROR = _load()
if not LOADED:
    warnings.warn(
        "t2ifast: the compiled extension t2ifast._C is not available "
        f"({LOAD_ERROR}); using the Triton and reference implementations. "
        "Reinstall with `pip install --no-build-isolation .` after installing torch to compile it.",
        ExtensionNotBuiltWarning,
        stacklevel=2,
    )

_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def _kernel_table():
    """{op name: set of device types ("cpu", "cuda") the extension has kernels for}, read off the dispatcher."""
    table = {}
    if LOADED:
        for device, key in _DISPATCH_KEYS.items():
            for qualified in torch._C._dispatch_get_registrations_for_dispatch_key(key):
                namespace, _, name = qualified.partition("::")
                if namespace == "t2ifast":
                    table.setdefault(name.split(".")[0], set()).add(device)
    return table


NATIVE_KERNELS = _kernel_table()
# Whether the CPU kernels run on torch's intra-op threads (the extension was compiled with OpenMP).
CPU_KERNELS_THREADED = LOADED and bool(getattr(importlib.import_module("t2ifast._C"), "compiled_with_openmp", 0))


def has_native_kernel(op: str, device_type: str) -> bool:
    return device_type in NATIVE_KERNELS.get(op, ())
