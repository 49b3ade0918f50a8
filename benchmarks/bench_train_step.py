"""One whole training step (D update, G update, EMA) of GAN-INT-CLS and of AttnGAN: the fused ops against the
reference eager path and torch.compile of the reference.

Shapes (on a GPU), the published settings of configs/gan-int-cls-birds.yaml and configs/attngan-birds.yaml:
- GAN-INT-CLS at 64×64, batch 64, ngf 128, ndf 64, 1024-d sentence embeddings (the char-CNN-RNN ones), z 100,
  text projection 128, wrong captions and interpolated text (96 fakes per step);
- AttnGAN with 3 stages (64, 128, 256), batch 20, ngf 32, ndf 64, a 256-d DAMSM (bi-LSTM text encoder, CNN image
  encoder, both frozen), 18 words per caption, λ = 5.
Implementations: each fused backend (`--backend native|triton`), the reference (`--backend reference`), and the
reference with the generator and discriminator passes compiled (`--backend reference --compile`).
extra_info holds images/s (the real batch per second).
"""

import pytest
import torch
from harness import DEVICE, SMOKE, available_backends, measure, with_backend

from t2ifast.data.loader import Batch
from t2ifast.models.attngan import pad_mask_of, stage_sizes
from t2ifast.training import artifacts
from t2ifast.training.attngan import AttnGANTask
from t2ifast.training.config import load_config
from t2ifast.training.gan_int_cls import GANINTCLSTask
from t2ifast.training.runtime import Runtime

VOCAB, WORDS = 5000, 18
GAN_INT_CLS = [
    "gan.damsm_weight=0",  # Reed et al.'s objective, as configs/gan-int-cls-birds.yaml (no DAMSM on char-CNN-RNN text)
    *(
        ["gan.ngf=4", "gan.ndf=4", "gan.projection_dim=8", "gan.z_dim=8", "train.batch_size=4"]
        if SMOKE
        else ["gan.ngf=128", "gan.ndf=64", "gan.projection_dim=128", "gan.z_dim=100", "train.batch_size=64"]
    ),
]
EMBEDDING_DIM = 16 if SMOKE else 1024
ATTNGAN = (
    ["gan.ngf=4", "gan.ndf=4", "gan.z_dim=8", "attngan.stages=2", "attngan.condition_dim=4",
     "attngan.residual_blocks=1", "text.embedding_dim=16", "text.word_embedding_dim=8",
     "text.image_encoder_width=4", "train.batch_size=2"]
    if SMOKE
    else ["gan.ngf=32", "gan.ndf=64", "gan.z_dim=100", "attngan.stages=3", "attngan.condition_dim=100",
          "attngan.residual_blocks=2", "text.embedding_dim=256", "text.word_embedding_dim=300", "train.batch_size=20"]
)  # fmt: skip
IMPLEMENTATIONS = [*available_backends("bn_act_train"), "reference", "compiled_reference"]


class RandomSentenceEmbeddings:
    """Stands in for precomputed sentence embeddings: a fixed random embedding per caption slot of the batch."""

    def __init__(self, embedding_dim, batch_size):
        self.embedding_dim = embedding_dim
        self.table = {which: torch.randn(batch_size, embedding_dim, device=DEVICE) for which in ("right", "wrong")}

    def __call__(self, batch, which="right"):
        return self.table[which][: len(batch)]


def random_batch(batch_size, sizes, seed=0):
    """A Batch of random images at `sizes` and random captions of up to WORDS words, on DEVICE."""
    generator = torch.Generator().manual_seed(seed)

    def captions():
        lengths = torch.randint(WORDS // 2, WORDS + 1, (batch_size,), generator=generator)
        mask = pad_mask_of(lengths, WORDS)
        return torch.randint(1, VOCAB, (batch_size, WORDS), generator=generator).masked_fill(mask, 0), lengths, mask

    (right, lengths, mask), (wrong, wrong_lengths, wrong_mask) = captions(), captions()
    return Batch(
        images={s: torch.rand(batch_size, 3, s, s, generator=generator) * 2 - 1 for s in sizes},
        captions=right,
        caption_lengths=lengths,
        caption_mask=mask,
        wrong_captions=wrong,
        wrong_lengths=wrong_lengths,
        wrong_mask=wrong_mask,
        class_ids=torch.arange(batch_size),
        indices=torch.arange(batch_size),
        wrong_indices=torch.arange(batch_size).roll(1),
        keys=[str(i) for i in range(batch_size)],
    ).to(DEVICE)


def _config(implementation, overrides):
    compiled = implementation == "compiled_reference"
    return load_config(overrides=[*overrides, f"train.compile={str(compiled).lower()}"])


def _backend(implementation):
    return "reference" if implementation == "compiled_reference" else implementation


def _run(benchmark, implementation, task, batch):
    measure(benchmark, with_backend(_backend(implementation), task.train_step), batch, rounds=20, warmup=3)
    if not benchmark.disabled:
        benchmark.extra_info["images/s"] = len(batch) / benchmark.stats.stats.median


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gan_int_cls_step(benchmark, implementation):
    torch._dynamo.reset()
    config = _config(implementation, ["model=gan-int-cls", *GAN_INT_CLS])
    batch_size = config.train.batch_size
    benchmark.group = f"GAN-INT-CLS train step 64px B={batch_size} ngf={config.gan.ngf} ndf={config.gan.ndf}"
    torch.manual_seed(0)
    embed = RandomSentenceEmbeddings(EMBEDDING_DIM, batch_size)
    task = GANINTCLSTask(config, embed, Runtime(torch.device(DEVICE)))
    _run(benchmark, implementation, task, random_batch(batch_size, (64,)))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_attngan_step(benchmark, implementation):
    torch._dynamo.reset()
    config = _config(implementation, ["model=attngan", *ATTNGAN])
    stages, batch_size = config.attngan.stages, config.train.batch_size
    benchmark.group = f"AttnGAN train step {stages} stages B={batch_size} ngf={config.gan.ngf} ndf={config.gan.ndf}"
    torch.manual_seed(0)
    text_encoder = artifacts.build_text_encoder(config, VOCAB)
    image_encoder = artifacts.build_image_encoder(config)
    task = AttnGANTask(config, text_encoder, image_encoder, Runtime(torch.device(DEVICE)))
    _run(benchmark, implementation, task, random_batch(batch_size, stage_sizes(stages)))
