"""Training Reed et al.'s text-conditioned GAN: GAN, GAN-CLS, GAN-INT and GAN-INT-CLS, and the style encoder.

One step, with B real images, their captions' embeddings t ("right") and mismatched ones t̂ ("wrong"):
1. the generator draws B fakes from (z, t) and — GAN-INT — B/2 more from interpolated text
   t_int = β·t[:B/2] + (1 − β)·t[B/2:2·(B/2)], in one forward pass;
2. the discriminator scores (real, t) → 1, (real, t̂) → 0 (GAN-CLS only) and (fake, t) → 0 with its trunk
   run once per image set (`MatchingAwareDiscriminator.score_pairs`) and the fused `matching_aware_loss`;
   the interpolated fakes are never scored here (no real image exists for them);
3. the generator minimises −log D(fake, text) over all its fakes, interpolated ones included (scored by D in
   a call of their own: BatchNorm statistics per kind of batch, as in step 2); with ``gan.damsm_weight`` λ > 0
   plus λ times AttnGAN's DAMSM word and sentence losses of the B fakes of the captions (`DAMSMGuidance`).
An exponential moving average of G's weights is kept and used for every sample.
"""

import copy

import torch

from t2ifast.models.matching_aware_discriminator import MatchingAwareDiscriminator
from t2ifast.models.text_conditioned_generator import StyleEncoder, TextConditionedGenerator
from t2ifast.ops import generator_loss
from t2ifast.training.damsm_guidance import DAMSMGuidance
from t2ifast.training.gan_task import GANTask, frozen, pair_loss, update
from t2ifast.training.runtime import distributed

VARIANTS = {  # model name -> (matching-aware pairs, interpolated text)
    "gan": (False, False),
    "gan-cls": (True, False),
    "gan-int": (False, True),
    "gan-int-cls": (True, True),
}


def wrong_embeddings(embed, batch, right, wrong_pairs):
    """The mismatched ("wrong") sentence embeddings of a batch whose matching ones are `right`: with
    gan.wrong_pairs "roll" `right` rolled by one sample, else those of the batch's wrong captions."""
    if wrong_pairs == "roll":
        return right.roll(1, dims=0)
    return embed(batch, "wrong")


def build_generator(config, embedding_dim):
    gan = config.gan
    return TextConditionedGenerator(embedding_dim, z_dim=gan.z_dim, projection_dim=gan.projection_dim, ngf=gan.ngf)


class GANINTCLSTask(GANTask):
    """The GAN step of `config.model` (gan, gan-cls, gan-int, gan-int-cls) on sentence embeddings `embed`.

    With ``gan.damsm_weight`` > 0, `image_encoder` (the DAMSM image encoder pretrained with `embed`'s text
    encoder; frozen here) scores the fakes against their captions in the generator loss.
    """

    name = "gan"

    def __init__(self, config, embed, runtime, *, image_encoder=None, preview_batch=None, preview_captions=()):
        self.config, self.embed, self.runtime = config, embed, runtime
        self.damsm = None
        if config.gan.damsm_weight > 0:
            if image_encoder is None or not hasattr(embed, "features"):
                raise ValueError(
                    "gan.damsm_weight > 0 needs the DAMSM: DAMSM sentence embeddings and their image_encoder"
                )
            self.damsm = DAMSMGuidance(image_encoder, config.text, runtime)
        self.matching_aware, self.interpolate = VARIANTS[config.model]
        gan = config.gan
        device = runtime.device
        self.generator = build_generator(config, embed.embedding_dim).to(device)
        self.discriminator = MatchingAwareDiscriminator(embed.embedding_dim, gan.projection_dim, gan.ndf).to(device)
        (self.d_optimizer,), (self._score_pairs,) = self._init_training(
            [self.discriminator], preview_batch, preview_captions
        )

    def texts(self, batch, sentence=None):
        """(right, wrong or None) sentence embeddings of a batch; `sentence`: the DAMSM's sentence features of its
        captions when already computed (then rescaled, not encoded again)."""
        right = self.embed(batch, "right") if sentence is None else self.embed.rescale(sentence)
        if not self.matching_aware:
            return right, None
        return right, wrong_embeddings(self.embed, batch, right, self.config.gan.wrong_pairs)

    def train_step(self, batch):
        real = batch.images[64]
        # with the DAMSM loss, the text encoder runs once: its word and sentence features serve both
        words = sentence = None
        if self.damsm is not None:
            words, sentence = self.embed.features(batch)
        right, wrong = self.texts(batch, sentence)
        conditions = right
        if self.interpolate:
            half, beta = len(right) // 2, self.config.gan.interpolation_beta
            conditions = torch.cat([right, beta * right[:half] + (1 - beta) * right[half : 2 * half]])
        z = torch.randn(len(conditions), self.config.gan.z_dim, device=real.device)
        with self.runtime.autocast():
            fakes = self._generate(z, conditions)

        # discriminator: (real, right) -> 1, (real, wrong) -> 0, (fake, right) -> 0
        with self.runtime.autocast():
            scores = self._score_pairs(real, fakes[: len(real)].detach(), right, wrong)
        d = pair_loss(scores, self.config.gan.smoothing)
        update(self.d_optimizer, d.loss)

        # generator: every fake, interpolated ones included, scored by the updated, frozen D with its text.
        # The interpolated fakes go through D in their own call, as in the authors' code: D's BatchNorm
        # normalises each call's batch, and D only ever learnt on batches of one kind; scored in one batch with
        # the others, they shift its statistics and D's verdict on every fake with them.
        with frozen(self.discriminator), self.runtime.autocast():
            groups = zip(fakes.split(len(real)), conditions.split(len(real)), strict=True)
            s_generated = torch.cat([self.discriminator(images, text) for images, text in groups])
        g_loss = generator_loss(s_generated.float())
        losses = {"d_loss": d.loss, "d_real": d.real, "d_fake": d.fake}
        if self.damsm is not None:
            word_loss, sentence_loss = self.damsm(fakes[: len(real)], batch, words, sentence)
            losses.update(
                g_adversarial=g_loss.detach(), g_damsm_word=word_loss.detach(), g_damsm_sentence=sentence_loss.detach()
            )
            g_loss = g_loss + self.config.gan.damsm_weight * (word_loss + sentence_loss)
        update(self.g_optimizer, g_loss)
        self.ema.update(self.generator)
        losses["g_loss"] = g_loss
        if self.matching_aware:
            losses["d_wrong"] = d.wrong
        return losses

    @property
    def sampler(self):
        """The EMA generator, for sampling."""
        return self.ema.module

    @torch.no_grad()
    def sample(self, batch, z=None):
        """Images of the EMA generator for a batch's captions."""
        embedding = self.embed(batch, "right")
        if z is None:
            z = torch.randn(len(embedding), self.config.gan.z_dim, device=embedding.device)
        generator = self.sampler
        generator.eval()
        return generator(z, embedding)


class StyleEncoderTask:
    """S trained on a finished, frozen generator: minimise ‖z − S(G(z, φ(t)))‖² over the captions' embeddings."""

    name = "style"

    def __init__(self, config, embed, generator, runtime):
        self.config, self.embed, self.runtime = config, embed, runtime
        self.generator = copy.deepcopy(generator).eval().requires_grad_(False)
        self.encoder = StyleEncoder(z_dim=config.gan.z_dim, ndf=config.gan.ndf).to(runtime.device)
        self.optimizer = runtime.adam(self.encoder.parameters(), config.train.lr_g, (0.5, 0.999))
        self._encode = distributed(self.encoder, runtime)

    def train_step(self, batch):
        embedding = self.embed(batch, "right")
        z = torch.randn(len(embedding), self.config.gan.z_dim, device=embedding.device)
        with torch.no_grad(), self.runtime.autocast():
            images = self.generator(z, embedding)
        with self.runtime.autocast():
            recovered = self._encode(images.float())
        loss = torch.nn.functional.mse_loss(recovered.float(), z)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"style_loss": loss}

    def state_dict(self):
        return {"encoder": self.encoder.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.encoder.load_state_dict(state["encoder"])
        self.optimizer.load_state_dict(state["optimizer"])

    def preview(self):
        return None
