import os
import sys

import torch

# Triton runs CPU tensors only in its interpreter, chosen when kernels are defined (before import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.dirname(__file__))
