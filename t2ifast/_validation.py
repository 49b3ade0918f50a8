"""Argument checks shared by every public function: each error names the argument and what was expected."""

import torch


def check_floating_tensors(**tensors):
    """Each argument is a floating-point tensor; all share the first one's dtype and device."""
    first_name, first = next(iter(tensors.items()))
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        if value.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {value.dtype} but {first_name} has {first.dtype}; they must match")
        if value.device != first.device:
            raise ValueError(f"{name} is on {value.device} but {first_name} is on {first.device}; they must match")


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_range(name, value, low, high, *, high_inclusive=True):
    ok = low <= value <= high if high_inclusive else low <= value < high
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}; got {value!r}")


def check_device(name, value):
    """`value` as a torch.device that this machine has: "cpu", "cuda" or "cuda:N"."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} must be cpu, cuda or cuda:N; got {value!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be cpu, cuda or cuda:N; got {value!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} is {value!r}, but torch sees no CUDA GPU on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{name} is {value!r}, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device
