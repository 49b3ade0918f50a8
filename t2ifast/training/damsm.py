"""Pretraining the DAMSM text and image encoders (AttnGAN §3.3) with the word and sentence losses.

The text encoder it produces gives the GANs their sentence embeddings φ(t) (and AttnGAN its word features).
"""

import torch

from t2ifast.models.damsm import DAMSM
from t2ifast.models.image_encoder import ImageEncoder, InceptionImageEncoder
from t2ifast.models.text_encoder import TextEncoder
from t2ifast.training.runtime import distributed


def build_damsm(config, vocabulary_size):
    text = config.text
    text_encoder = TextEncoder(vocabulary_size, embedding_dim=text.word_embedding_dim, hidden_dim=text.embedding_dim)
    if text.inception_weights:
        image_encoder = InceptionImageEncoder(text.inception_weights, embedding_dim=text.embedding_dim)
    else:
        image_encoder = ImageEncoder(
            embedding_dim=text.embedding_dim, width=text.image_encoder_width, positional=text.image_encoder_positional
        )
    return DAMSM(text_encoder, image_encoder)


class _Losses(torch.nn.Module):
    """DAMSM.losses as a forward, for DistributedDataParallel."""

    def __init__(self, damsm, gammas):
        super().__init__()
        self.damsm, self.gammas = damsm, gammas

    def forward(self, images, captions, lengths, class_ids):
        return self.damsm.losses(images, captions, lengths, class_ids, **self.gammas)


class DAMSMTask:
    name = "damsm"

    def __init__(self, config, vocabulary_size, runtime, *, use_class_ids=False):
        self.config, self.runtime, self.use_class_ids = config, runtime, use_class_ids
        self.damsm = build_damsm(config, vocabulary_size).to(runtime.device)
        parameters = [p for p in self.damsm.parameters() if p.requires_grad]
        self.optimizer = runtime.adam(parameters, config.text.pretrain_lr, (0.5, 0.999))
        gammas = {"gamma1": config.text.gamma1, "gamma2": config.text.gamma2, "gamma3": config.text.gamma3}
        self._losses = distributed(_Losses(self.damsm, gammas), runtime)

    def train_step(self, batch):
        self.damsm.train()
        images = batch.images[min(batch.images)]
        class_ids = batch.class_ids if self.use_class_ids else None
        with self.runtime.autocast():
            losses = self._losses(images, batch.captions, batch.caption_lengths, class_ids)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(self.damsm.parameters(), 0.25)  # as AttnGAN's DAMSM training
        self.optimizer.step()
        return {f"damsm_{name}": value.float() for name, value in losses.items()}

    def state_dict(self):
        return {"damsm": self.damsm.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.damsm.load_state_dict(state["damsm"])
        self.optimizer.load_state_dict(state["optimizer"])

    def preview(self):
        return None
