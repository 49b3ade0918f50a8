"""Checkpoints: atomic, loaded without code execution, restoring every RNG."""

import pickle
import random

import numpy as np
import pytest
import torch

from t2ifast.training import checkpoint


class _Exploding:
    def __reduce__(self):
        raise RuntimeError("killed mid-write")


def _draws():
    return torch.rand(3), random.random(), np.random.rand()  # noqa: NPY002


def test_resume_restores_rng_and_state(tmp_path):
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    path = checkpoint.save_checkpoint(tmp_path, 7, {"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    expected = _draws()
    state = checkpoint.load_checkpoint(path)
    assert state["step"] == 7
    for got, want in zip(_draws(), expected, strict=True):
        assert torch.equal(torch.as_tensor(got), torch.as_tensor(want))
    restored = torch.nn.Linear(4, 3)
    restored.load_state_dict(state["model"])
    assert torch.equal(restored.weight, model.weight)
    torch.optim.Adam(restored.parameters()).load_state_dict(state["optimizer"])


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path):
    first = checkpoint.save_checkpoint(tmp_path, 1, {"w": torch.randn(5)})
    with pytest.raises(RuntimeError, match="killed mid-write"):
        checkpoint.save_checkpoint(tmp_path, 2, {"w": _Exploding()})
    assert checkpoint.list_checkpoints(tmp_path) == [first]
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no temporary file left behind
    assert checkpoint.load_checkpoint(first)["step"] == 1


def test_keeps_only_the_newest(tmp_path):
    for step in range(5):
        checkpoint.save_checkpoint(tmp_path, step, {}, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "checkpoint-000000003.pt",
        "checkpoint-000000004.pt",
    ]
    assert checkpoint.latest_checkpoint(tmp_path).name == "checkpoint-000000004.pt"


def test_loading_refuses_code(tmp_path):
    path = tmp_path / "checkpoint-000000001.pt"

    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    with open(path, "wb") as f:
        pickle.dump({"step": 1, "x": Payload()}, f)
    with pytest.raises(RuntimeError, match="could not be read safely"):
        checkpoint.load_checkpoint(path)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint-000000009\.pt does not exist"):
        checkpoint.load_checkpoint(checkpoint.checkpoint_path(tmp_path, 9))
