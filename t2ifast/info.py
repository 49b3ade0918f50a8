"""``python -m t2ifast.info``: what this installation was built with and what it can run."""

import argparse
import importlib.metadata
import platform

import torch

from t2ifast import _backend, _extension


def _version(*distributions):
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def report():
    """The build report as a list of lines."""
    lines = [
        f"t2ifast        {_version('t2ifast') or 'not installed (running from source)'}",
        f"python         {platform.python_version()}",
        f"torch          {torch.__version__} (CUDA {torch.version.cuda or 'none: CPU build'})",
    ]
    if _extension.LOADED:
        threads = "on torch's threads (OpenMP)" if _extension.CPU_KERNELS_THREADED else "on one thread (no OpenMP)"
        lines.append(f"extension      t2ifast._C loaded; CPU kernels run {threads}")
        for op, devices in sorted(_extension.NATIVE_KERNELS.items()):
            lines.append(f"  {op:<32} kernels: {', '.join(sorted(devices)) or 'none'}")
    else:
        lines.append(f"extension      not available: {_extension.LOAD_ERROR}")
    triton_version = _version("triton", "pytorch-triton")
    if _backend.TRITON_AVAILABLE:
        mode = "interpreter (CPU tensors too)" if _backend.TRITON_INTERPRETED else "compiled (CUDA tensors)"
        lines.append(f"triton         {triton_version}, {mode}")
    else:
        lines.append("triton         not installed")
    dali_version = _version("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali")
    lines.append(f"dali           {dali_version or 'not installed'}")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            lines.append(
                f"gpu {index}          {props.name}, sm_{props.major}{props.minor}, "
                f"{props.total_memory / 2**30:.0f} GiB"
            )
    else:
        lines.append("gpu            none visible")
    lines.append(f"backend        {_backend.forced_backend() or 'automatic (native > triton on CUDA > reference)'}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m t2ifast.info",
        description="What this installation of t2ifast was built with and what it can run: the Python, torch and "
        "CUDA versions, the native extension and its kernels, Triton, DALI, the visible GPUs and the kernel backend.",
    )
    parser.parse_args(argv)
    print("\n".join(report()))


if __name__ == "__main__":
    main()
