"""Training AttnGAN on a pretrained, frozen DAMSM.

One step, with B real images at each stage's size, their captions and mismatched ("wrong") captions:
1. the frozen DAMSM text encoder gives the word features e [B, D, T] and sentence features ē [B, D] of the
   captions (and the wrong captions' sentence features) under no_grad;
2. G(z, ē, e, pad_mask) draws one image per stage (64, 128, 256 pixels) in one forward pass;
3. each stage's discriminator D_i takes its own step (its own Adam, as AttnGAN's ``optimizersD``) on
   (real_i, ē) -> 1, (real_i, ē_wrong) -> 0, (fake_i, ē) -> 0 and the unconditional real_i -> 1, fake_i -> 0,
   with AttnGAN's combination of the binary cross-entropies (each a batch mean, the real targets smoothed by
   ``gan.smoothing``):

       L_D_i = (L_uncond_real + L_cond_real) / 2 + (L_uncond_fake + L_cond_fake + L_cond_wrong) / 3;

4. the generator, with every D frozen (parameters not requiring grad; still in training mode), minimises

       L_G = Σ_i [BCE(D_i(fake_i, ē) -> 1) + BCE(D_i^uncond(fake_i) -> 1)]
             + λ · (DAMSM word loss + DAMSM sentence loss)  +  kl_weight · KL(N(μ, σ²) ‖ N(0, I)),

   where the DAMSM losses score the final-stage images, resized to the image encoder's input size, against
   their own captions with the frozen DAMSM image encoder (gradients flow through it to G), each the sum of
   its two cross-entropies as in AttnGAN (γ1, γ2, γ3 = text.gamma1/2/3; same-class mismatches left out when
   the batch carries class ids).
An exponential moving average of G's weights is kept and used for every sample.

The wrong captions are the batch's ``wrong_captions`` (a caption of another sample; of another class where the
dataset has classes) with ``gan.wrong_pairs="class"``, or the batch's sentence features rolled by one with
``"roll"``.
"""

import torch

from t2ifast.models.attngan import AttnGANDiscriminators, AttnGANGenerator, pad_mask_of
from t2ifast.models.conditioning_augmentation import kl_loss
from t2ifast.ops import generator_loss, matching_aware_loss
from t2ifast.training.damsm_guidance import DAMSMGuidance
from t2ifast.training.gan_task import GANTask, frozen, pair_loss, update


def build_attngan_generator(config, word_dim):
    gan, attngan = config.gan, config.attngan
    return AttnGANGenerator(
        word_dim,
        z_dim=gan.z_dim,
        condition_dim=attngan.condition_dim,
        ngf=gan.ngf,
        stages=attngan.stages,
        residual_blocks=attngan.residual_blocks,
    )


@torch.no_grad()
def sample_attngan(generator, text_encoder, batch, z=None, *, return_attention=False):
    """Final-stage images [B, 3, S, S] of an AttnGAN generator for a batch's captions (anything with ``captions``
    and ``caption_lengths`` on the models' device), from the word and sentence features of the DAMSM text encoder
    it was trained with; both modules are put in eval mode. z: the noise [B, z_dim], drawn when None. With
    ``return_attention=True`` the pair (images, attention), attention being the list of word attention maps
    ``[B, T, H, W]`` of each stage i >= 1 (empty for a one-stage model; the last is the final stage's)."""
    text_encoder.eval()
    generator.eval()
    words, sentence = text_encoder(batch.captions, batch.caption_lengths)
    pad_mask = pad_mask_of(batch.caption_lengths.to(words.device), words.shape[2])
    if z is None:
        z = torch.randn(len(sentence), generator.z_dim, device=sentence.device)
    out = generator(z, sentence.float(), words.float(), pad_mask, return_attention=return_attention)
    if return_attention:
        return out.images[-1], out.attention
    return out.images[-1]


def _freeze(module, device):
    return module.to(device).eval().requires_grad_(False)


class TextFeatures:
    """The frozen DAMSM text features of a batch: words [B, D, T], sentence [B, D], pad_mask [B, T] and the
    wrong captions' sentence [B, D]."""

    def __init__(self, words, sentence, pad_mask, wrong):
        self.words, self.sentence, self.pad_mask, self.wrong = words, sentence, pad_mask, wrong


class AttnGANTask(GANTask):
    """The AttnGAN step (see the module docstring) on a pretrained DAMSM's text and image encoders.

    Args:
        config: the training Config (sections ``gan``, ``attngan``, ``text``, ``train``).
        text_encoder: the DAMSM TextEncoder (captions, lengths) -> (words [B, D, T], sentence [B, D]); frozen here
            (eval mode, requires_grad False: the caller's module is changed).
        image_encoder: the DAMSM image encoder images -> (regions [B, D, n, n], code [B, D]); frozen likewise.
        runtime: the Runtime (device, DDP, autocast).
        preview_batch, preview_captions: a fixed batch (images not needed) and its caption strings for preview().
    """

    name = "attngan"

    def __init__(self, config, text_encoder, image_encoder, runtime, *, preview_batch=None, preview_captions=()):
        self.config, self.runtime = config, runtime
        gan = config.gan
        device = runtime.device
        self.text_encoder = _freeze(text_encoder, device)
        self.damsm = DAMSMGuidance(image_encoder, config.text, runtime)
        self.image_encoder = self.damsm.image_encoder
        word_dim = text_encoder.hidden_dim
        image_dim = getattr(image_encoder, "embedding_dim", word_dim)
        if image_dim != word_dim:
            raise ValueError(
                f"image_encoder.embedding_dim ({image_dim}) must equal text_encoder.hidden_dim ({word_dim})"
            )
        self.generator = build_attngan_generator(config, word_dim).to(device)
        self.discriminators = AttnGANDiscriminators(word_dim, gan.projection_dim, gan.ndf, config.attngan.stages)
        self.discriminators.to(device)
        self.sizes = self.discriminators.image_sizes
        # one optimizer per stage's D, as AttnGAN's optimizersD
        self.d_optimizers, self._score_pairs = self._init_training(
            list(self.discriminators), preview_batch, preview_captions
        )

    @torch.no_grad()
    def text_features(self, batch):
        """TextFeatures of a batch from the frozen text encoder; the right and wrong captions in one call."""
        if self.text_encoder.training:  # frozen means no dropout, whatever was done to the module since
            self.text_encoder.eval()
        captions, lengths = batch.captions, batch.caption_lengths
        with_wrong = self.config.gan.wrong_pairs == "class"
        if with_wrong:
            if batch.wrong_captions.shape != captions.shape:
                raise ValueError(
                    f"batch.wrong_captions must be shaped as batch.captions {tuple(captions.shape)}, "
                    f"got {tuple(batch.wrong_captions.shape)}"
                )
            captions = torch.cat([captions, batch.wrong_captions])
            lengths = torch.cat([lengths, batch.wrong_lengths])
        words, sentence = self.text_encoder(captions, lengths)
        batch_size = len(batch.captions)
        pad_mask = pad_mask_of(batch.caption_lengths.to(words.device), words.shape[2])
        words, sentence, wrong_sentence = words[:batch_size], sentence[:batch_size], sentence[batch_size:]
        if not with_wrong:
            wrong_sentence = sentence.roll(1, dims=0)
        return TextFeatures(words.float(), sentence.float(), pad_mask, wrong_sentence)

    def _real_images(self, batch):
        missing = [size for size in self.sizes if size not in batch.images]
        if missing:
            raise ValueError(
                f"batch.images must hold the sizes {list(self.sizes)} (one per stage), missing {missing}; "
                f"it holds {sorted(batch.images)}"
            )
        return [batch.images[size] for size in self.sizes]

    def train_step(self, batch):
        reals = self._real_images(batch)
        text = self.text_features(batch)
        z = torch.randn(len(text.sentence), self.config.gan.z_dim, device=text.sentence.device)
        with self.runtime.autocast():
            out = self._generate(z, text.sentence, text.words, text.pad_mask, return_attention=False)
        fakes = out.images

        # discriminators: each stage's D on its own images, with its own optimizer
        smoothing = self.config.gan.smoothing
        losses, d_total = {}, 0.0
        for size, real, fake, score_pairs, optimizer in zip(
            self.sizes, reals, fakes, self._score_pairs, self.d_optimizers, strict=True
        ):
            with self.runtime.autocast():
                scores = score_pairs(real, fake.detach(), text.sentence, text.wrong)
            cond = pair_loss(scores, smoothing)
            uncond = matching_aware_loss(
                scores.real_unconditional.float(),
                scores.real.new_empty(0, dtype=torch.float32),
                scores.fake_unconditional.float(),
                smoothing=smoothing,
            )
            d_loss = (uncond.real + cond.real) / 2 + (uncond.fake + cond.fake + cond.wrong) / 3
            update(optimizer, d_loss)
            losses[f"d_loss_{size}"] = d_loss.detach()
            d_total = d_total + d_loss.detach()

        # generator: through every D, frozen
        attngan = self.config.attngan
        with frozen(self.discriminators):
            g_adversarial = 0.0
            for fake, discriminator in zip(fakes, self.discriminators, strict=True):
                with self.runtime.autocast():
                    scores = discriminator.score_images(fake, text.sentence)
                g_adversarial = (
                    g_adversarial
                    + generator_loss(scores.conditional.float())
                    + generator_loss(scores.unconditional.float())
                )
            word, sentence = self.damsm(fakes[-1], batch, text.words, text.sentence)
            g_damsm = word + sentence
            g_kl = kl_loss(out.mu.float(), out.logvar.float())
            g_loss = g_adversarial + attngan.damsm_weight * g_damsm + attngan.kl_weight * g_kl
            update(self.g_optimizer, g_loss)
        self.ema.update(self.generator)
        losses.update(
            d_loss=d_total,
            g_adversarial=g_adversarial.detach(),
            g_damsm=g_damsm.detach(),
            g_damsm_word=word.detach(),
            g_damsm_sentence=sentence.detach(),
            g_kl=g_kl.detach(),
            g_loss=g_loss.detach(),
        )
        return losses

    @property
    def sampler(self):
        """The EMA generator, for sampling."""
        return self.ema.module

    def state_dict(self):
        return {
            "generator": self.generator.state_dict(),
            "discriminators": self.discriminators.state_dict(),
            "ema": self.ema.state_dict(),
            "g_optimizer": self.g_optimizer.state_dict(),
            "d_optimizers": [optimizer.state_dict() for optimizer in self.d_optimizers],
        }

    def load_state_dict(self, state):
        if len(state["d_optimizers"]) != len(self.d_optimizers):
            raise ValueError(
                f"the state holds {len(state['d_optimizers'])} discriminator optimizers; this model has "
                f"{len(self.d_optimizers)} stages (attngan.stages must match the checkpoint's)"
            )
        self.generator.load_state_dict(state["generator"])
        self.discriminators.load_state_dict(state["discriminators"])
        self.ema.load_state_dict(state["ema"])
        self.g_optimizer.load_state_dict(state["g_optimizer"])
        for optimizer, saved in zip(self.d_optimizers, state["d_optimizers"], strict=True):
            optimizer.load_state_dict(saved)

    @torch.no_grad()
    def sample(self, batch, z=None, *, return_attention=False):
        """Final-stage images [B, 3, S, S] of the EMA generator for a batch's captions; with
        ``return_attention=True`` the pair (images, attention), attention being the list of word attention
        maps ``[B, T, H, W]`` of each stage i >= 1 (empty for a one-stage model; the last is the final stage's)."""
        return sample_attngan(self.sampler, self.text_encoder, batch, z, return_attention=return_attention)


__all__ = ["AttnGANTask", "build_attngan_generator", "sample_attngan"]
