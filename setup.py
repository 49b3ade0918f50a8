"""Builds t2ifast and, where it can, its compiled operator library ``t2ifast._C``.

What gets built:
- CUDA + CPU kernels when torch is a CUDA build and a CUDA toolkit is found;
- CPU kernels only otherwise;
- no extension with ``T2IFAST_BUILD_EXT=0``, when torch cannot be found, or when compiling fails:
  the package still installs and runs on its reference and Triton paths.

Environment: ``T2IFAST_BUILD_EXT=0`` (skip the extension), ``T2IFAST_BUILD_CUDA=0`` (CPU kernels only),
``CUDA_HOME``, ``TORCH_CUDA_ARCH_LIST``, ``MAX_JOBS``.
"""

import glob
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def log(message):
    print(f"t2ifast setup: {message}", file=sys.stderr)


def import_torch():
    """The torch the extension will run against: the C++ ABI must match, so never a different copy.

    Under pip's build isolation the user's site-packages are hidden; look there before giving up,
    so that a plain ``pip install .`` still compiles against the torch already installed.
    """
    try:
        import torch

        return torch
    except ImportError:
        pass
    for path in (sysconfig.get_paths()["purelib"], site.getusersitepackages()):
        if os.path.isdir(os.path.join(path, "torch")) and path not in sys.path:
            sys.path.append(path)
    try:
        import torch

        return torch
    except ImportError:
        return None


def is_toolkit(home):
    return (
        bool(home)
        and os.path.isfile(os.path.join(home, "bin", "nvcc"))
        and (os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")))
    )


def find_cuda_home():
    """The real CUDA toolkit home, also when the ``nvcc`` on PATH is a wrapper script elsewhere."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if is_toolkit(os.environ.get(var)):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if is_toolkit(guess):
            return guess
        # A wrapper: nvcc itself reports where it lives in its dry-run environment ("#$ TOP=...").
        try:
            dry = subprocess.run([nvcc, "--dryrun", "--version"], capture_output=True, text=True, timeout=60)
            match = re.search(r"^#\$ TOP=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
            if match:
                top = os.path.realpath(os.path.join(match.group(1).strip(), ".."))
                if is_toolkit(top):
                    return top
                if is_toolkit(os.path.realpath(match.group(1).strip())):
                    return os.path.realpath(match.group(1).strip())
        except (OSError, subprocess.SubprocessError):
            pass
    if is_toolkit("/usr/local/cuda"):
        return "/usr/local/cuda"
    return None


def remove_stale_extension():
    """pip builds in the source tree: an extension left in build/ by an earlier build would otherwise be
    packaged by a build that did not (or could not) compile it."""
    for path in glob.glob(os.path.join(HERE, "build", "lib*", "t2ifast", "_C*")):
        os.remove(path)


def extension_modules():
    if os.environ.get("T2IFAST_BUILD_EXT", "1") == "0":
        log("T2IFAST_BUILD_EXT=0: installing without the compiled extension.")
        remove_stale_extension()
        return [], {}
    torch = import_torch()
    if torch is None:
        log(
            "torch is not importable at build time: installing without the compiled extension. "
            "Install torch first, then reinstall t2ifast to compile it."
        )
        remove_stale_extension()
        return [], {}

    want_cuda = os.environ.get("T2IFAST_BUILD_CUDA", "1") != "0" and torch.version.cuda is not None
    cuda_home = find_cuda_home() if want_cuda else None
    if want_cuda and cuda_home:
        # torch.utils.cpp_extension reads CUDA_HOME once, when it is imported.
        os.environ["CUDA_HOME"] = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # No GPU to detect the architecture from: build for Ampere and Hopper.
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    from torch.utils import cpp_extension

    def sources_ending(suffix):
        found = glob.glob(os.path.join(HERE, "csrc", "**", f"*{suffix}"), recursive=True)
        return [os.path.relpath(path, HERE) for path in sorted(found)]

    sources = sources_ending(".cpp")
    # The C++ standard is torch's choice (C++20 from torch 2.13 on). at::parallel_for is a header template that
    # runs on torch's intra-op threads only when compiled with OpenMP, as torch is: without -fopenmp every CPU
    # kernel would run on one thread. The extension then links the libgomp that torch has already loaded.
    # `#pragma omp simd` (vectorised reductions in the CPU kernels) needs only -fopenmp-simd.
    openmp = torch.backends.openmp.is_available() and sys.platform.startswith("linux")
    openmp_flags = ["-fopenmp"] if openmp else ["-fopenmp-simd"]
    cxx_flags = ["-O3", *openmp_flags]
    link_flags = ["-fopenmp"] if openmp else []
    if want_cuda and cuda_home:
        sources += sources_ending(".cu")
        log(
            f"building CPU and CUDA kernels (CUDA_HOME={cuda_home}, "
            f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', 'auto')})."
        )
        ext = cpp_extension.CUDAExtension(
            "t2ifast._C",
            sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link_flags,
        )
    else:
        reason = (
            "torch is a CPU build"
            if torch.version.cuda is None
            else ("T2IFAST_BUILD_CUDA=0" if not want_cuda else "no CUDA toolkit was found")
        )
        log(f"building CPU kernels only ({reason}).")
        ext = cpp_extension.CppExtension(
            "t2ifast._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags
        )

    class BuildExtension(cpp_extension.BuildExtension):
        """torch's builder, except that a failed compile installs the package without the extension."""

        def run(self):
            try:
                super().run()
            except Exception as error:  # any compiler failure means "no extension"
                if os.environ.get("T2IFAST_REQUIRE_EXT") == "1":
                    raise
                log(f"compiling the extension failed ({error}); installing without it.")
                remove_stale_extension()
                self.extensions = []
                self.distribution.ext_modules = []

    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
