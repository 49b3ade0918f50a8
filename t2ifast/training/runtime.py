"""Where a run executes: device, distributed process group (torchrun), mixed precision, seeding.

Under `torchrun --nproc_per_node=K` every process reads RANK / LOCAL_RANK / WORLD_SIZE from its environment,
joins a process group (NCCL on GPUs, gloo on CPUs — so DistributedDataParallel also runs on a CPU machine)
and trains on its shard of the data. Rank 0 alone writes checkpoints, logs and pictures.
"""

import contextlib
import fcntl
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from t2ifast.training.config import ConfigError


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    amp: str = "none"

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def autocast(self):
        """bf16 autocast when asked for (the losses are computed in float32 outside it)."""
        if self.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def adam(self, parameters, lr, betas):
        """torch.optim.Adam for parameters on this device: on a GPU with its fused implementation, one kernel per
        step instead of foreach's ten or so (a GAN step here is bound by launches); torch's default elsewhere."""
        return torch.optim.Adam(parameters, lr=lr, betas=betas, fused=True if self.device.type == "cuda" else None)

    def barrier(self):
        if self.distributed:
            dist.barrier()

    @contextlib.contextmanager
    def exclusive(self, lock_path, waiting_message):
        """Hold an exclusive lock on the file lock_path against every other job on this machine: two runs
        started at once that would fill the same cache (pretrain the same DAMSM) take turns, and the second
        finds the first's result instead of repeating it into the same folder. The main rank alone locks
        (waiting_message is printed if another job holds the lock); the other ranks of this job wait at a
        barrier until it holds the lock, so that all of them then see the same cache."""
        if not self.is_main:
            self.barrier()
            yield
            return
        lock_path = Path(lock_path)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(waiting_message, flush=True)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self.barrier()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def start_runtime(device="auto", amp="none"):
    """The Runtime of this process, joining the torchrun process group when WORLD_SIZE > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda was asked for, but torch sees no CUDA GPU")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device=device, rank=rank, world_size=world_size, amp=amp)


def stop_runtime(runtime):
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed, rank=0):
    """Seed Python, NumPy and torch; each rank draws its own noise."""
    seed = seed + 1000003 * rank
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global generator is what user code draws from
    torch.manual_seed(seed)


def distributed(module, runtime):
    """The module wrapped in DistributedDataParallel when the run has several processes, else itself."""
    if not runtime.distributed:
        return module
    return DistributedDataParallel(module, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
