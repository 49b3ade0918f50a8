"""DAMSM (AttnGAN's Deep Attentional Multimodal Similarity Model): a text encoder and an image encoder trained
so that matching images and captions score high, word by word (word loss) and as a whole (sentence loss).

    damsm = DAMSM.create(len(dataset.vocabulary))              # TextEncoder + ImageEncoder, 256-d features
    terms = damsm.losses(batch.images[64], batch.captions, batch.caption_lengths, batch.class_ids)
    terms["total"].backward()

The pretrained DAMSM then gives the AttnGAN generator its word and sentence features
(`encode_text`) and its DAMSM loss on generated images (`losses`).
"""

import torch
from torch import nn

from t2ifast.losses import damsm_sentence_loss, damsm_word_loss
from t2ifast.models.image_encoder import ImageEncoder
from t2ifast.models.text_encoder import TextEncoder


def distinct_missing_classes(class_ids):
    """class_ids [B] with each -1 ("no class") replaced by an id of its own, or None when every id is -1."""
    if class_ids is None:
        return None
    class_ids = torch.as_tensor(class_ids)
    missing = class_ids < 0
    if bool(missing.all()):
        return None
    own = -1 - torch.arange(class_ids.numel(), device=class_ids.device).reshape(class_ids.shape)
    return torch.where(missing, own, class_ids)


class DAMSM(nn.Module):
    """A DAMSM: ``text_encoder`` (captions -> word features [B, D, T], sentence [B, D]) and ``image_encoder``
    (images -> regions [B, D, n, n], code [B, D]) with the same feature size D."""

    def __init__(self, text_encoder, image_encoder):
        super().__init__()
        text_dim = getattr(text_encoder, "hidden_dim", None)
        image_dim = getattr(image_encoder, "embedding_dim", None)
        if text_dim is not None and image_dim is not None and text_dim != image_dim:
            raise ValueError(
                f"image_encoder.embedding_dim ({image_dim}) must equal text_encoder.hidden_dim ({text_dim})"
            )
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder

    @classmethod
    def create(
        cls, vocab_size, *, embedding_dim=256, word_dim=300, input_size=64, width=64, dropout=0.5, positional=False
    ):
        """A DAMSM trained from scratch: TextEncoder(vocab_size, word_dim -> embedding_dim) and
        ImageEncoder(embedding_dim, input_size, width, positional)."""
        text = TextEncoder(vocab_size, embedding_dim=word_dim, hidden_dim=embedding_dim, dropout=dropout)
        return cls(text, ImageEncoder(embedding_dim, input_size=input_size, width=width, positional=positional))

    @property
    def embedding_dim(self):
        return self.text_encoder.hidden_dim

    def encode_text(self, captions, lengths):
        """(words [B, D, T], sentence [B, D]) of captions [B, T] with lengths [B]."""
        return self.text_encoder(captions, lengths)

    def encode_images(self, images):
        """(regions [B, D, n, n], code [B, D]) of images [B, 3, S, S] in [-1, 1]."""
        return self.image_encoder(images)

    def losses(self, images, captions, lengths, class_ids=None, *, gamma1=4.0, gamma2=5.0, gamma3=10.0):
        """The DAMSM losses of B matching (image, caption) pairs: ``{"word", "sentence", "total"}`` scalars.

        Each term is the sum of its two cross-entropies (each image picks its caption among the batch's, each
        caption its image), as AttnGAN sums w_loss0 + w_loss1 and s_loss0 + s_loss1; total = word + sentence.
        class_ids [B] (optional): mismatched pairs of the same class are left out of the softmaxes; -1 means
        "no class" (such a sample is treated as the only one of its class).
        """
        if images.shape[0] != captions.shape[0]:
            raise ValueError(
                f"images must hold one image per caption: [B={captions.shape[0]}, 3, S, S], got {tuple(images.shape)}"
            )
        words, sentence = self.text_encoder(captions, lengths)
        regions, code = self.image_encoder(images)
        class_ids = distinct_missing_classes(class_ids)
        if class_ids is not None:
            class_ids = class_ids.to(words.device)
        word = damsm_word_loss(
            words,
            torch.as_tensor(lengths).to(words.device),
            regions.flatten(2),
            class_ids=class_ids,
            gamma1=gamma1,
            gamma2=gamma2,
            gamma3=gamma3,
        )
        sent = damsm_sentence_loss(code, sentence, class_ids=class_ids, gamma3=gamma3)
        word_total = word.images + word.captions
        sentence_total = sent.images + sent.captions
        return {"word": word_total, "sentence": sentence_total, "total": word_total + sentence_total}


__all__ = ["DAMSM", "distinct_missing_classes"]
