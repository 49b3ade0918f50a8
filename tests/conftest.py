"""Test setup. Triton runs CPU tensors only in its interpreter, which it chooses when a kernel is
defined: so without a GPU, TRITON_INTERPRET=1 is set here, before t2ifast (and its kernels) is imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
