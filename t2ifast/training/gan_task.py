"""What the GAN tasks (GAN-INT-CLS, StackGAN, AttnGAN) share: their checkpointed state and their preview grid."""

import torch

from t2ifast.visualize import caption_grid


class GANTask:
    """Base of a GAN task. `checkpointed` names the attributes (modules, optimisers, the EMA) whose state_dicts
    make up the task's; `sample(batch, z)` and the preview_batch / preview_captions / _preview_z attributes are
    the subclass's."""

    checkpointed = ("generator", "discriminator", "ema", "g_optimizer", "d_optimizer")

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
