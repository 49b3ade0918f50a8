"""Checkpoints that survive a killed run and load without executing code.

A checkpoint is one file written atomically (temporary file in the same folder, fsync, rename), so a
run killed at any moment leaves either the previous checkpoint or the new one, never a torn file. It
holds plain containers of tensors and numbers only, and is read with ``torch.load(weights_only=True)``:
loading a checkpoint from elsewhere cannot run arbitrary code. RNG states (Python, NumPy, torch CPU and
CUDA) are saved with it so that a resumed run continues exactly where the interrupted one was.
"""

import random
import re
from pathlib import Path

import numpy as np
import torch

from t2ifast._atomic import atomic_file

_NAME = re.compile(r"^checkpoint-(\d{9})\.pt$")


def checkpoint_path(folder, step):
    return Path(folder) / f"checkpoint-{step:09d}.pt"


def atomic_save(obj, path):
    """torch.save to `path` so that readers only ever see a complete file."""
    with atomic_file(path, durable=True) as temporary:
        torch.save(obj, temporary)


def rng_state():
    """Every random generator a training step draws from, as weights_only-loadable values."""
    np_state = np.random.get_state()  # noqa: NPY002 - the global generator is what user code draws from
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].copy()),
            "pos": np_state[2],
            "has_gauss": np_state[3],
            "cached_gaussian": np_state[4],
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    random.setstate(_as_tuple(state["python"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["key"].numpy(), numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(folder, step, state, *, keep=3):
    """Write `state` (a dict of state_dicts and numbers) as the checkpoint of `step`, with the RNG states;
    keep only the newest `keep` checkpoints. Returns the path."""
    path = checkpoint_path(folder, step)
    atomic_save({"step": step, "rng": rng_state(), **state}, path)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder):
    """Checkpoint files in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def load_checkpoint(path, *, restore_rng=True):
    """Load a checkpoint safely (weights_only) and, by default, restore the RNG states saved with it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RuntimeError(f"checkpoint {path} could not be read safely: {error}") from error
    if restore_rng:
        set_rng_state(state["rng"])
    return state


def latest_checkpoint(folder):
    """The newest checkpoint in `folder`, or None."""
    found = list_checkpoints(folder)
    return found[-1] if found else None
