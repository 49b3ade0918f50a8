"""AttnGAN's DAMSM loss as a term of a generator's objective: generated images scored against their own captions
by a pretrained, frozen DAMSM.

The image encoder gives each image's region features and global code; the DAMSM word loss (`damsm_word_loss`, on
the all-pairs word-region scores) and sentence loss (`damsm_sentence_loss`) ask each image to pick its caption
among the batch's captions and each caption its image. Gradients flow through the frozen image encoder into the
generator. AttnGAN adds λ times their sum to its generator loss (`attngan.damsm_weight`); the GAN-INT-CLS family
can too (`gan.damsm_weight`), which on the synthetic set teaches colour much sooner than the discriminator alone.
"""

from t2ifast.losses import damsm_sentence_loss, damsm_word_loss
from t2ifast.models.damsm import distinct_missing_classes
from t2ifast.models.image_encoder import resize_images


class DAMSMGuidance:
    """``guidance(images, batch, words, sentence)`` -> (word loss, sentence loss), each the sum of its two
    cross-entropies as in AttnGAN.

    Args:
        image_encoder: the DAMSM image encoder, images -> (regions [B, D, n, n], code [B, D]); frozen here (eval
            mode, requires_grad False: the caller's module is changed) and moved to the runtime's device.
        text_config: the config's ``text`` section (γ1, γ2, γ3 = ``gamma1``, ``gamma2``, ``gamma3``).
        runtime: the Runtime (device, autocast).

    The call takes images [B, 3, S, S] (resized to the encoder's ``input_size``), the batch they were drawn for
    (its ``caption_lengths`` and, when it has them, ``class_ids``: same-class mismatches are left out), and the
    frozen DAMSM text encoder's word features [B, D, T] and sentence features [B, D] of the batch's captions.
    """

    def __init__(self, image_encoder, text_config, runtime):
        self.image_encoder = image_encoder.to(runtime.device).eval().requires_grad_(False)
        self.text_config, self.runtime = text_config, runtime

    def __call__(self, images, batch, words, sentence):
        if self.image_encoder.training:  # frozen means BatchNorm's running statistics, whatever was done since
            self.image_encoder.eval()
        input_size = getattr(self.image_encoder, "input_size", None)
        if input_size is not None:
            images = resize_images(images, input_size)
        with self.runtime.autocast():
            regions, code = self.image_encoder(images)
        class_ids = distinct_missing_classes(batch.class_ids)
        if class_ids is not None:
            class_ids = class_ids.to(regions.device)
        gammas = self.text_config
        word = damsm_word_loss(
            words.float(),
            batch.caption_lengths.to(regions.device),
            regions.float().flatten(2),
            class_ids=class_ids,
            gamma1=gammas.gamma1,
            gamma2=gammas.gamma2,
            gamma3=gammas.gamma3,
        )
        sentence = damsm_sentence_loss(code.float(), sentence.float(), class_ids=class_ids, gamma3=gammas.gamma3)
        return word.images + word.captions, sentence.images + sentence.captions
