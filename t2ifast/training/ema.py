"""An exponential moving average of a generator's weights, the model every GAN here samples from (AttnGAN saves
its EMA generator too): torch's AveragedModel with a decay that warms up, so a short run's average is not stuck
near its random start."""

import torch
from torch.optim.swa_utils import AveragedModel


class GeneratorEMA:
    """ema = GeneratorEMA(generator, decay); ema.update(generator) after each step; ema.module samples.

    The decay grows as (1 + n) / (10 + n) up to `decay` with the number of updates n (counted on the host: no
    sync). BatchNorm's running statistics are averaged like the weights; num_batches_tracked is copied.
    """

    def __init__(self, generator, decay):
        self.decay, self.updates = decay, 0
        self.averaged = AveragedModel(generator, multi_avg_fn=self._average, use_buffers=True)

    @property
    def module(self):
        return self.averaged.module

    def update(self, generator):
        self.averaged.update_parameters(generator)
        self.updates += 1

    def _average(self, averaged, current, num_averaged):
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        if averaged[0].is_floating_point():  # AveragedModel groups tensors by dtype
            torch._foreach_lerp_(averaged, current, 1 - decay)
        else:
            torch._foreach_copy_(averaged, current)

    def state_dict(self):
        return self.averaged.state_dict()

    def load_state_dict(self, state):
        self.averaged.load_state_dict(state)
        self.updates = int(self.averaged.n_averaged)
