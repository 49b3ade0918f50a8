"""Training StackGAN, one stage at a time: Stage I at 64×64, then Stage II at 256×256 on the frozen Stage I.

One step, with B real images and their captions' embeddings t ("right") and mismatched ones t̂ ("wrong"):
1. the generator draws B fakes and its Conditioning Augmentation's (μ, log σ²) from t (Stage II from the
   frozen Stage-I generator's 64×64 images of the same z and t);
2. the discriminator scores (real, μ) → 1, (real, μ̂) → 0 and (fake, μ) → 0 with the fused matching-aware
   loss; as in the authors' code D is conditioned on the CA mean μ, detached (μ̂: the CA mean of t̂);
3. the generator minimises −log D(fake, μ) + kl_weight · KL(N(μ, σ²) ‖ N(0, I)), D frozen.
An exponential moving average of G's weights is kept and used for every sample.
"""

import copy

import torch

from t2ifast.models.conditioning_augmentation import kl_loss
from t2ifast.models.matching_aware_discriminator import MatchingAwareDiscriminator
from t2ifast.models.stackgan import StackGAN, StackGANStage1Generator, StackGANStage2Generator
from t2ifast.ops import generator_loss
from t2ifast.training.config import has_stage2
from t2ifast.training.gan_int_cls import wrong_embeddings
from t2ifast.training.gan_task import GANTask, frozen, pair_loss, update

IMAGE_SIZES = {1: 64, 2: 256}


def build_stage1_generator(config, embedding_dim):
    gan, stackgan = config.gan, config.stackgan
    return StackGANStage1Generator(embedding_dim, z_dim=gan.z_dim, condition_dim=stackgan.condition_dim, ngf=gan.ngf)


def build_stage2_generator(config, embedding_dim):
    stackgan = config.stackgan
    return StackGANStage2Generator(
        embedding_dim,
        condition_dim=stackgan.condition_dim,
        ngf=config.gan.ngf,
        residual_blocks=stackgan.residual_blocks,
    )


def build_stackgan_sampler(config, embedding_dim):
    """The generator a StackGAN run saves (the last stage's `StackGANTask.sampler`), untrained: Stage I alone, or
    both stages as one StackGAN when the run has a Stage II."""
    stage1 = build_stage1_generator(config, embedding_dim)
    if not has_stage2(config):
        return stage1
    return StackGAN(stage1, build_stage2_generator(config, embedding_dim))


class StackGANTask(GANTask):
    """The StackGAN step of one stage on sentence embeddings `embed`.

    Args:
        config: the run's Config (its gan and stackgan sections).
        embed: embed(batch, "right" | "wrong") -> sentence embeddings [B, embed.embedding_dim].
        runtime: the Runtime (device, DDP, autocast).
        stage: 1 (64×64) or 2 (256×256).
        stage1_generator: Stage II only: the trained Stage-I generator (e.g. Stage I's EMA sampler); a frozen
            copy in eval mode is kept and saved with the task's state.
        preview_batch, preview_captions: a fixed batch and its captions for preview().
    """

    def __init__(
        self, config, embed, runtime, *, stage, stage1_generator=None, preview_batch=None, preview_captions=()
    ):
        if stage not in IMAGE_SIZES:
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        if (stage == 2) != (stage1_generator is not None):
            raise ValueError("stage1_generator must be given for stage 2, and only for stage 2")
        self.config, self.embed, self.runtime, self.stage = config, embed, runtime, stage
        self.name = f"stackgan-stage{stage}"
        self.image_size = IMAGE_SIZES[stage]
        gan = config.gan
        device = runtime.device
        build = build_stage1_generator if stage == 1 else build_stage2_generator
        self.generator = build(config, embed.embedding_dim).to(device)
        self.stage1_generator = None
        if stage == 2:  # a frozen copy, saved with the task so that Stage II resumes on its own
            self.stage1_generator = copy.deepcopy(stage1_generator).to(device).eval().requires_grad_(False)
            self.checkpointed = (*GANTask.checkpointed, "stage1_generator")
        self.discriminator = MatchingAwareDiscriminator(
            config.stackgan.condition_dim, gan.projection_dim, gan.ndf, image_size=self.image_size
        ).to(device)
        (self.d_optimizer,), (self._score_pairs,) = self._init_training(
            [self.discriminator], preview_batch, preview_captions
        )

    def _stage1_images(self, z, embedding):
        with torch.no_grad():
            return self.stage1_generator(z, embedding).image

    def train_step(self, batch):
        real = batch.images[self.image_size]
        right = self.embed(batch, "right")
        wrong = wrong_embeddings(self.embed, batch, right, self.config.gan.wrong_pairs)
        z = torch.randn(len(right), self.config.gan.z_dim, device=real.device)
        with self.runtime.autocast():
            source = z if self.stage == 1 else self._stage1_images(z, right)
            fake, mu, logvar = self._generate(source, right)
        with torch.no_grad():  # the wrong text's condition: the CA mean, as D sees the right text's
            mu_wrong = self.generator.ca_net(wrong, sample=False)[1]

        # discriminator: (real, μ) -> 1, (real, μ̂) -> 0, (fake, μ) -> 0
        condition = mu.detach()
        with self.runtime.autocast():
            scores = self._score_pairs(real, fake.detach(), condition, mu_wrong)
        d = pair_loss(scores, self.config.gan.smoothing)
        update(self.d_optimizer, d.loss)

        # generator: −log D(fake, μ) + kl_weight · KL, scored by the updated, frozen D
        with frozen(self.discriminator), self.runtime.autocast():
            s_generated = self.discriminator(fake, condition)
        g_loss = generator_loss(s_generated.float())
        kl = kl_loss(mu.float(), logvar.float())
        update(self.g_optimizer, g_loss + self.config.stackgan.kl_weight * kl)
        self.ema.update(self.generator)
        return {"d_loss": d.loss, "d_real": d.real, "d_wrong": d.wrong, "d_fake": d.fake, "g_loss": g_loss, "kl": kl}

    @property
    def sampler(self):
        """The EMA generator as (z, embedding) -> StackGANOutput; at stage 2 behind the frozen Stage I."""
        if self.stage == 1:
            return self.ema.module
        return StackGAN(self.stage1_generator, self.ema.module)

    @torch.no_grad()
    def sample(self, batch, z=None):
        """Images [B, 3, S, S] of the EMA generator (S = 64 or 256) for a batch's captions."""
        embedding = self.embed(batch, "right")
        if z is None:
            z = torch.randn(len(embedding), self.config.gan.z_dim, device=embedding.device)
        sampler = self.sampler
        sampler.eval()
        return sampler(z, embedding).image
