"""What the GAN tasks (GAN-INT-CLS, StackGAN, AttnGAN) share: their setup around the generator and discriminators,
their checkpointed state, their preview grid, and the pieces of a step — the matching-aware loss of D's pair scores,
one optimiser update, and D frozen while the generator's loss goes through it."""

import contextlib

import torch
from torch import nn

from t2ifast.ops import matching_aware_loss
from t2ifast.training.ema import GeneratorEMA
from t2ifast.training.runtime import distributed
from t2ifast.visualize import caption_grid


class PairScorer(nn.Module):
    """score_pairs as a forward, so that DistributedDataParallel sees the discriminator step."""

    def __init__(self, discriminator):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, real, fake, right, wrong):
        return self.discriminator.score_pairs(real, fake, right, wrong)


def pair_loss(scores, smoothing):
    """matching_aware_loss of a PairScores (real, wrong, fake logits), in float32."""
    return matching_aware_loss(scores.real.float(), scores.wrong.float(), scores.fake.float(), smoothing=smoothing)


def update(optimizer, loss):
    """One optimiser step on `loss`."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@contextlib.contextmanager
def frozen(module):
    """`module`'s parameters without gradients inside the block: D while the generator's loss goes through it
    (called outside DDP then: it has no gradients to share)."""
    module.requires_grad_(False)
    try:
        yield module
    finally:
        module.requires_grad_(True)


class GANTask:
    """Base of a GAN task. `checkpointed` names the attributes (modules, optimisers, the EMA) whose state_dicts
    make up the task's; `sample(batch, z)` is the subclass's. A subclass sets self.config, self.runtime and
    self.generator, then calls `_init_training` with its discriminators."""

    checkpointed = ("generator", "discriminator", "ema", "g_optimizer", "d_optimizer")

    def _init_training(self, discriminators, preview_batch, preview_captions):
        """Sets up what every GAN task keeps around self.generator: its EMA and Adam optimiser, the generator
        wrapped for DDP (and compiled with train.compile), and the preview grid's captions and fixed noise (the same
        images' progress at every preview). Returns (optimisers, pair scorers), one of each per discriminator in
        `discriminators`, the scorers wrapped and compiled as the generator."""
        gan, train, runtime = self.config.gan, self.config.train, self.runtime
        betas = tuple(train.betas)
        self.ema = GeneratorEMA(self.generator, gan.ema_decay)
        self.g_optimizer = runtime.adam(self.generator.parameters(), train.lr_g, betas)
        d_optimizers = [runtime.adam(d.parameters(), train.lr_d, betas) for d in discriminators]
        self._generate = distributed(self.generator, runtime)
        scorers = [distributed(PairScorer(d), runtime) for d in discriminators]
        if train.compile:
            self._generate = torch.compile(self._generate)
            scorers = [torch.compile(scorer) for scorer in scorers]
        self.preview_batch, self.preview_captions = preview_batch, list(preview_captions)
        self._preview_z = None
        if preview_batch is not None:
            self._preview_z = torch.randn(len(preview_batch), gan.z_dim, device=runtime.device)
        return d_optimizers, scorers

    def state_dict(self):
        return {name: getattr(self, name).state_dict() for name in self.checkpointed}

    def load_state_dict(self, state):
        for name in self.checkpointed:
            getattr(self, name).load_state_dict(state[name])

    @torch.no_grad()
    def preview(self):
        if self.preview_batch is None:
            return None
        return caption_grid(self.sample(self.preview_batch, self._preview_z).float().cpu(), self.preview_captions)
