"""What the GAN tasks (GAN-INT-CLS, StackGAN, AttnGAN) share: their checkpointed state, their preview grid, and
the pieces of a step — the matching-aware loss of D's pair scores, one optimiser update, and D frozen while the
generator's loss goes through it."""

import contextlib

import torch

from t2ifast.ops import matching_aware_loss
from t2ifast.visualize import caption_grid


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
    make up the task's; `sample(batch, z)` is the subclass's, and `_init_preview` sets what `preview` draws."""

    checkpointed = ("generator", "discriminator", "ema", "g_optimizer", "d_optimizer")

    def _init_preview(self, preview_batch, preview_captions, z_dim, device):
        """The preview grid's captions and its fixed noise (the same images' progress at every preview)."""
        self.preview_batch, self.preview_captions = preview_batch, list(preview_captions)
        self._preview_z = None if preview_batch is None else torch.randn(len(preview_batch), z_dim, device=device)

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
