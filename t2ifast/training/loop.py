"""The training loop every model shares: steps, logging, checkpoints, resume, divergence.

A task (GAN-INT-CLS, DAMSM pretraining, the style encoder, ...) provides

    name                      its checkpoint folder's name
    train_step(batch)         one optimisation step -> {loss name: 0-dim tensor}
    state_dict() / load_state_dict(state)   models, optimisers, schedulers, EMA
    preview()                 a PIL image to look at (or None)

and `train` runs it for `steps` steps over the loader's epochs. Losses are summed on the device and read
back once every `log_every` steps (no host sync per step); a NaN or Inf in any loss of any rank shows up in
those sums and stops the run with a clear message after saving the state it reached beside the last good
checkpoint. Checkpoints hold the task, the loader's position and every RNG, so `resume=True` continues
from the exact step of the newest checkpoint. With `time_limit_s` the run also ends, checkpointed, at the first
step after that many seconds of this call (under torchrun: the first log step, all ranks at the same step).
"""

from pathlib import Path
from time import monotonic

import numpy as np
import torch
import torch.distributed as dist

from t2ifast.training import checkpoint
from t2ifast.training.monitor import Monitor


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf."""


def checkpoint_folder(out_dir, task):
    return Path(out_dir) / "checkpoints" / task.name


def train(
    task,
    loader,
    runtime,
    *,
    out_dir,
    steps,
    log_every=25,
    checkpoint_every=250,
    sample_every=250,
    keep_checkpoints=3,
    resume=False,
    time_limit_s=None,
):
    """Run `task` until `steps` steps are done (or `time_limit_s` seconds have passed); returns the mean losses of
    the last logging interval."""
    started = monotonic()
    out_dir = Path(out_dir)
    folder = checkpoint_folder(out_dir, task)
    step = 0
    if resume:
        found = checkpoint.latest_checkpoint(folder)
        if found is not None:
            state = checkpoint.load_checkpoint(found)  # restores every RNG
            task.load_state_dict(state["task"])
            loader.load_state_dict(state["loader"])
            step = state["step"]
    monitor = Monitor(
        out_dir / "tensorboard" / task.name, total_steps=steps, initial_step=step, enabled=runtime.is_main,
        description=task.name,
    )  # fmt: skip
    if step:
        monitor.write(f"{task.name}: resumed from {found} at step {step}")
    sums, count, last = {}, 0, {}

    def save():
        if runtime.is_main:
            state = {"task": task.state_dict(), "loader": loader.state_dict()}
            checkpoint.save_checkpoint(folder, step, state, keep=keep_checkpoints)
        runtime.barrier()

    try:
        while step < steps:
            for batch in loader:
                losses = task.train_step(batch.to(runtime.device, non_blocking=True))
                step += 1
                count += 1
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + value.detach().float()
                monitor.advance(len(batch) * runtime.world_size)
                if step < steps and _out_of_time(started, time_limit_s, runtime, step, log_every):
                    monitor.write(f"{task.name}: stopped at step {step}, its {time_limit_s:g} s budget spent")
                    steps = step  # the last step: logged, previewed and checkpointed below
                if step % log_every == 0 or step == steps:
                    last = _mean_over_ranks(sums, count, runtime)
                    sums, count = {}, 0
                    if not all(np.isfinite(v) for v in last.values()):
                        _stop_diverged(task, loader, runtime, folder, step, last)
                    monitor.scalars(step, last)
                if step % sample_every == 0 or step == steps:
                    _preview(task, runtime, monitor, out_dir, step)
                if step % checkpoint_every == 0 or step == steps:
                    save()
                if step >= steps:
                    break
    finally:
        monitor.close()
    return last


def _mean_over_ranks(sums, count, runtime):
    names = sorted(sums)
    means = torch.stack([sums[name] for name in names]) / count
    if runtime.distributed:
        dist.all_reduce(means)
        means /= runtime.world_size
    return dict(zip(names, means.tolist(), strict=True))


def _out_of_time(started, time_limit_s, runtime, step, log_every):
    """Whether the time budget is spent: checked after every step on the host clock; under torchrun only at log
    steps, where the ranks agree (any rank out of time stops them all at the same step)."""
    if time_limit_s is None:
        return False
    spent = monotonic() - started > time_limit_s
    if not runtime.distributed:
        return spent
    if step % log_every:
        return False
    flag = torch.tensor(float(spent), device=runtime.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _stop_diverged(task, loader, runtime, folder, step, losses):
    bad = ", ".join(f"{name}={value}" for name, value in losses.items() if not np.isfinite(value))
    last_good = checkpoint.latest_checkpoint(folder)
    saved = folder / f"diverged-{step:09d}.pt"
    if runtime.is_main:  # kept apart from the checkpoints, so that resume never picks it
        checkpoint.atomic_save({"step": step, "task": task.state_dict(), "loader": loader.state_dict()}, saved)
    raise TrainingDiverged(
        f"{task.name}: a loss is not finite at step {step} ({bad}). The state it reached is saved in {saved} "
        f"for inspection; the last good checkpoint is {last_good or 'none'} (resume from it with --resume, "
        "perhaps with a lower learning rate or --amp none)."
    )


def _preview(task, runtime, monitor, out_dir, step):
    if not runtime.is_main:
        return
    picture = task.preview()
    if picture is None:
        return
    folder = out_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    picture.save(folder / f"{task.name}-step{step:06d}.png")
    monitor.images(step, f"{task.name}/samples", np.asarray(picture.convert("RGB")))
