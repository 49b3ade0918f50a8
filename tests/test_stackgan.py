"""StackGAN: both generators and their discriminators, one training step of each stage, resume, bad input, and
the generator a run saves."""

import io
import math

import pytest
import torch

from t2ifast.data.loader import Batch
from t2ifast.models.conditioning_augmentation import kl_loss
from t2ifast.models.matching_aware_discriminator import MatchingAwareDiscriminator
from t2ifast.models.stackgan import StackGAN, StackGANOutput, StackGANStage1Generator, StackGANStage2Generator
from t2ifast.training.config import has_stage2, image_sizes, load_config
from t2ifast.training.runtime import Runtime
from t2ifast.training.stackgan import StackGANTask, build_stackgan_sampler, build_stage1_generator

EMBEDDING_DIM, B = 12, 4
TINY = [
    "model=stackgan",
    "gan.ngf=4",
    "gan.ndf=4",
    "gan.z_dim=8",
    "gan.projection_dim=8",
    "stackgan.condition_dim=6",
    "stackgan.residual_blocks=1",
    f"train.batch_size={B}",
]


class FixedEmbeddings:
    """A stand-in sentence encoder: a fixed random embedding per caption index (wrong captions: their own)."""

    embedding_dim = EMBEDDING_DIM

    def __init__(self, count=2 * B, seed=0):
        self.table = torch.randn(count, EMBEDDING_DIM, generator=torch.Generator().manual_seed(seed))

    def __call__(self, batch, which="right"):
        return self.table[batch.indices if which == "right" else batch.wrong_indices]


def _batch(seed=0, sizes=(64, 256)):
    generator = torch.Generator().manual_seed(seed)
    captions = torch.randint(1, 9, (B, 5), generator=generator)
    lengths, mask = torch.full((B,), 5), torch.zeros(B, 5, dtype=torch.bool)
    return Batch(
        images={s: torch.rand(B, 3, s, s, generator=generator) * 2 - 1 for s in sizes},
        captions=captions,
        caption_lengths=lengths,
        caption_mask=mask,
        wrong_captions=captions.roll(1, 0),
        wrong_lengths=lengths,
        wrong_mask=mask,
        class_ids=torch.full((B,), -1),
        indices=torch.arange(B),
        wrong_indices=torch.arange(B, 2 * B),
        keys=[f"image-{i}" for i in range(B)],
    )


def _config(*extra):
    return load_config(overrides=[*TINY, *extra])


def _task(stage, *extra, seed=0, **kwargs):
    config = _config(*extra)
    torch.manual_seed(seed)
    if stage == 2:
        kwargs["stage1_generator"] = build_stage1_generator(config, EMBEDDING_DIM)
    return StackGANTask(config, FixedEmbeddings(), Runtime(torch.device("cpu")), stage=stage, **kwargs)


def _finite(losses):
    return all(math.isfinite(value.item()) for value in losses.values())


def test_generator_and_discriminator_shapes():
    torch.manual_seed(0)
    stage1 = StackGANStage1Generator(EMBEDDING_DIM, z_dim=8, condition_dim=6, ngf=4)
    stage2 = StackGANStage2Generator(EMBEDDING_DIM, condition_dim=6, ngf=4, residual_blocks=2)
    embedding = torch.randn(B, EMBEDDING_DIM)
    low = stage1(torch.randn(B, 8), embedding)
    assert isinstance(low, StackGANOutput)
    assert low.image.shape == (B, 3, 64, 64) and low.mu.shape == low.logvar.shape == (B, 6)
    high = stage2(low.image, embedding)
    assert high.image.shape == (B, 3, 256, 256) and high.mu.shape == (B, 6)
    assert low.image.abs().max() <= 1 and high.image.abs().max() <= 1
    kl = kl_loss(high.mu, high.logvar)
    assert math.isfinite(kl.item()) and kl.item() >= 0
    (high.image.square().mean() + kl).backward()
    assert all(p.grad is not None for p in stage2.parameters())
    assert all(p.grad is not None for p in stage1.parameters())  # through the Stage-I image here
    for size, image in ((64, low.image), (256, high.image)):
        discriminator = MatchingAwareDiscriminator(6, 8, 4, image_size=size)
        assert discriminator(image.detach(), high.mu.detach()).shape == (B,)


def test_bad_input_is_a_named_error():
    stage1 = StackGANStage1Generator(EMBEDDING_DIM, z_dim=8, condition_dim=6, ngf=4)
    stage2 = StackGANStage2Generator(EMBEDDING_DIM, condition_dim=6, ngf=4, residual_blocks=1)
    embedding = torch.randn(B, EMBEDDING_DIM)
    with pytest.raises(ValueError, match=r"z must be \[B, z_dim=8\], got shape \(4, 7\)"):
        stage1(torch.randn(B, 7), embedding)
    with pytest.raises(ValueError, match=r"embedding must be \[B=4, embedding_dim=12\], got shape \(3, 12\)"):
        stage1(torch.randn(B, 8), embedding[:3])
    with pytest.raises(ValueError, match=r"stage1_image must be \[B, 3, 64, 64\], got shape \(4, 3, 32, 32\)"):
        stage2(torch.randn(B, 3, 32, 32), embedding)
    with pytest.raises(ValueError, match=r"embedding must be \[B=4, embedding_dim=12\], got shape \(4, 11\)"):
        stage2(torch.randn(B, 3, 64, 64), embedding[:, :11])
    with pytest.raises(ValueError, match="ngf must be a positive integer, got 0"):
        StackGANStage1Generator(EMBEDDING_DIM, ngf=0)
    with pytest.raises(ValueError, match="residual_blocks must be a positive integer"):
        StackGANStage2Generator(EMBEDDING_DIM, residual_blocks=0)
    with pytest.raises(ValueError, match="stage must be 1 or 2, got 3"):
        _task(3)
    with pytest.raises(ValueError, match="stage1_generator must be given for stage 2"):
        StackGANTask(_config(), FixedEmbeddings(), Runtime(torch.device("cpu")), stage=2)


def _parameters(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _changed(before, module):
    return all(not torch.equal(before[name], p) for name, p in module.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("wrong_pairs", ["class", "roll"])
def test_one_stage1_step(wrong_pairs):
    task = _task(1, f"gan.wrong_pairs={wrong_pairs}", preview_batch=_batch(9), preview_captions=["a"] * B)
    assert task.name == "stackgan-stage1"
    generator, discriminator = _parameters(task.generator), _parameters(task.discriminator)
    losses = task.train_step(_batch())
    assert set(losses) == {"d_loss", "d_real", "d_wrong", "d_fake", "g_loss", "kl"} and _finite(losses)
    assert _changed(generator, task.generator) and _changed(discriminator, task.discriminator)
    assert task.sample(_batch()).shape == (B, 3, 64, 64)
    assert task.preview() is not None


def test_one_stage2_step_keeps_stage1_frozen():
    task = _task(2, preview_batch=_batch(9), preview_captions=["a"] * B)
    assert task.name == "stackgan-stage2" and not task.stage1_generator.training
    stage1, generator = _parameters(task.stage1_generator), _parameters(task.generator)
    discriminator = _parameters(task.discriminator)
    losses = task.train_step(_batch())
    assert _finite(losses)
    assert _changed(generator, task.generator) and _changed(discriminator, task.discriminator)
    assert all(torch.equal(stage1[name], p) for name, p in task.stage1_generator.named_parameters())
    assert task.sample(_batch()).shape == (B, 3, 256, 256)
    assert task.sampler(torch.randn(B, 8), FixedEmbeddings()(_batch())).image.shape == (B, 3, 256, 256)
    assert "stage1_generator" in task.state_dict()


def test_steps_lower_the_discriminator_loss_on_a_fixed_batch():
    task = _task(1, "train.lr_d=2e-3", seed=1)
    batch = _batch()
    losses = [task.train_step(batch)["d_loss"].item() for _ in range(12)]
    assert all(math.isfinite(v) for v in losses)
    # the (real, wrong) term keeps it above ~0.9 this early (a fresh CA's μ differ little); 0.6-0.7 for seeds 0-3
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses


def test_state_dict_round_trip_resumes_to_the_same_next_steps():
    task = _task(1, seed=2)
    for seed in range(2):
        task.train_step(_batch(seed))
    buffer = io.BytesIO()
    torch.save(task.state_dict(), buffer)
    rng = torch.get_rng_state()
    expected = [{k: v.item() for k, v in task.train_step(_batch(seed)).items()} for seed in (2, 3)]

    resumed = _task(1, seed=7)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    torch.set_rng_state(rng)
    got = [{k: v.item() for k, v in resumed.train_step(_batch(seed)).items()} for seed in (2, 3)]
    assert got == expected
    for name, tensor in task.state_dict()["ema"].items():
        torch.testing.assert_close(resumed.state_dict()["ema"][name], tensor, rtol=0, atol=0)


def test_the_sampler_builder_builds_what_the_last_stage_saves():
    """build_stackgan_sampler (for load_run) has the layout of the last stage's sampler (generator.safetensors)."""
    stage1_only = build_stackgan_sampler(_config("stackgan.stage2_steps=0"), EMBEDDING_DIM)
    assert isinstance(stage1_only, StackGANStage1Generator)
    assert stage1_only.state_dict().keys() == _task(1).sampler.state_dict().keys()
    both = build_stackgan_sampler(_config(), EMBEDDING_DIM)
    assert isinstance(both, StackGAN) and both.state_dict().keys() == _task(2).sampler.state_dict().keys()
    on_a_given_stage1 = _config("stackgan.stage2_steps=0", "stackgan.stage1_generator=stage1.safetensors")
    assert isinstance(build_stackgan_sampler(on_a_given_stage1, EMBEDDING_DIM), StackGAN)


class _Loader:
    """A stand-in loader of 100 samples: only its batch size and length matter to the stage schedule."""

    def __init__(self, batch_size):
        self.batch_size = batch_size

    def __len__(self):
        return 100 // self.batch_size


@pytest.mark.parametrize(
    ("extra", "stage2_schedule"),
    [
        ([], (B, 7)),  # Stage II as Stage I: train.batch_size, stackgan.stage2_steps
        (["stackgan.stage2_batch_size=10"], (10, 7)),
        (["stackgan.stage2_batch_size=10", "stackgan.stage2_epochs=3"], (10, 3 * 10)),  # epochs of its own loader
        (["stackgan.stage2_epochs=2"], (B, 2 * 25)),
    ],
)
def test_stage2_runs_its_own_batch_size_and_steps_or_epochs(monkeypatch, tmp_path, extra, stage2_schedule):
    import t2ifast.train as train_module

    schedule = []
    monkeypatch.setattr(train_module, "loader_for", lambda config, dataset, runtime, *, batch_size: _Loader(batch_size))
    monkeypatch.setattr(train_module, "_preview", lambda dataset, runtime: {})
    monkeypatch.setattr(
        train_module,
        "train",
        lambda task, loader, runtime, **kw: schedule.append((task.name, loader.batch_size, kw["steps"])),
    )
    config = _config("train.steps=5", "stackgan.stage2_steps=7", *extra)
    last = train_module.train_stackgan(
        config, None, FixedEmbeddings(), Runtime(torch.device("cpu")), tmp_path, resume=False
    )
    assert schedule == [("stackgan-stage1", B, 5), ("stackgan-stage2", *stage2_schedule)]
    assert last.name == "stackgan-stage2" and (tmp_path / "stage1_generator.safetensors").is_file()


def test_stage2_epochs_alone_make_a_stage2_run():
    config = _config("stackgan.stage2_steps=0", "stackgan.stage2_epochs=1")
    assert has_stage2(config) and image_sizes(config) == (64, 256)
    assert not has_stage2(_config("stackgan.stage2_steps=0"))
