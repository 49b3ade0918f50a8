"""What a person watches during a run: a progress bar with the losses and images/s, TensorBoard scalars and
image grids. Only rank 0 shows or writes anything."""

import sys
import time

from tqdm.auto import tqdm


class Monitor:
    def __init__(self, log_dir, *, total_steps, initial_step=0, enabled=True, description="train"):
        self.enabled = enabled
        self.writer = None
        self.bar = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # imported here: TensorBoard is slow to import

            self.writer = SummaryWriter(str(log_dir))
            self.bar = tqdm(total=total_steps, initial=initial_step, desc=description, unit="step", dynamic_ncols=True)
        self._last_time, self._images = time.perf_counter(), 0

    def advance(self, images):
        """One step of `images` samples done."""
        self._images += images
        if self.bar is not None:
            self.bar.update(1)

    def scalars(self, step, values):
        """Log mean losses (floats) and the throughput since the last call."""
        now = time.perf_counter()
        values = {**values, "images_per_s": self._images / max(now - self._last_time, 1e-9)}
        self._last_time, self._images = now, 0
        if not self.enabled:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)

    def images(self, step, tag, picture):
        """An [H, W, 3] uint8 picture."""
        if self.enabled:
            self.writer.add_image(tag, picture, step, dataformats="HWC")

    def write(self, message):
        if self.enabled:
            tqdm.write(message, file=sys.stderr)

    def close(self):
        if self.enabled:
            self.bar.close()
            self.writer.close()
