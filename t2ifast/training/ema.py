"""An exponential moving average of a generator's weights, the model every GAN here samples from (AttnGAN saves
its EMA generator too), with a decay that warms up, so a short run's average is not stuck near its random start.

One update is two foreach ops over the whole model (torch's AveragedModel, used before, spent two ops per tensor
on detach and device moves each step, a fifth of a GAN-INT-CLS step's dispatches). The state_dict is
AveragedModel's ("n_averaged" and "module.*"), so checkpoints written with it still load.
"""

import copy
import itertools

import torch


class GeneratorEMA:
    """ema = GeneratorEMA(generator, decay); ema.update(generator) after each step; ema.module samples.

    The first update copies the generator; update n + 1 moves the average towards it with the decay
    min(decay, (1 + n) / (10 + n)), counted on the host (no sync). BatchNorm's running statistics are averaged
    like the weights; integer buffers (num_batches_tracked) are copied.
    """

    def __init__(self, generator, decay):
        self.decay, self.updates = decay, 0
        self.module = copy.deepcopy(generator).requires_grad_(False)  # never trained: no autograd graph

    @torch.no_grad()
    def update(self, generator):
        averaged = list(itertools.chain(self.module.parameters(), self.module.buffers()))
        current = list(itertools.chain(generator.parameters(), generator.buffers()))
        if self.updates == 0:
            torch._foreach_copy_(averaged, current)
        else:
            floating = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
            others = [(a, c) for a, c in zip(averaged, current, strict=True) if not a.is_floating_point()]
            decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
            if floating:
                torch._foreach_lerp_([a for a, _ in floating], [c for _, c in floating], 1 - decay)
            if others:
                torch._foreach_copy_([a for a, _ in others], [c for _, c in others])
        self.updates += 1

    def state_dict(self):
        module = {f"module.{name}": value for name, value in self.module.state_dict().items()}
        return {"n_averaged": torch.tensor(self.updates, dtype=torch.long), **module}

    def load_state_dict(self, state):
        prefix = "module."
        self.module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        self.updates = int(state["n_averaged"])
