"""AttnGAN: the generator's stages and word attention, the per-stage discriminators, one training step of the
task on tiny frozen DAMSM encoders, resume, and the word attention picture."""

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

from t2ifast.data.loader import Batch
from t2ifast.models.attngan import AttnGANDiscriminators, AttnGANGenerator, pad_mask_of, stage_sizes
from t2ifast.models.image_encoder import ImageEncoder
from t2ifast.models.text_encoder import TextEncoder
from t2ifast.training.attngan import AttnGANTask
from t2ifast.training.config import load_config
from t2ifast.training.runtime import Runtime
from t2ifast.visualize import GAP, PAD, attention_grid, font, line_height

B, T, D, VOCAB = 4, 5, 8, 12
LENGTHS = torch.tensor([5, 3, 1, 2])


def _generator(stages, **options):
    return AttnGANGenerator(D, z_dim=6, condition_dim=4, ngf=4, stages=stages, residual_blocks=1, **options)


def _inputs(batch=B):
    return torch.randn(batch, 6), torch.randn(batch, D), torch.randn(batch, D, T), pad_mask_of(LENGTHS[:batch], T)


def test_pad_mask_of_marks_the_positions_past_each_length():
    assert pad_mask_of(torch.tensor([3, 1]), 4).tolist() == [[False, False, False, True], [False, True, True, True]]
    with pytest.raises(ValueError, match=r"lengths must be \[B\]"):
        pad_mask_of(torch.ones(2, 2), 4)


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_generator_gives_one_image_per_stage_and_attention_over_the_valid_words(stages):
    torch.manual_seed(0)
    generator = _generator(stages)
    z, sentence, words, pad_mask = _inputs()
    out = generator(z, sentence, words, pad_mask)
    assert [tuple(image.shape) for image in out.images] == [(B, 3, s, s) for s in stage_sizes(stages)]
    assert all(image.abs().max() <= 1 for image in out.images)
    assert [tuple(a.shape) for a in out.attention] == [(B, T, s, s) for s in stage_sizes(stages)[:-1]]
    assert out.mu.shape == out.logvar.shape == (B, 4)
    for attn in out.attention:
        torch.testing.assert_close(attn.sum(dim=1), torch.ones(B, *attn.shape[2:]))  # over the words, per region
        assert (attn >= 0).all()
        assert (attn.masked_select(pad_mask[:, :, None, None].expand_as(attn)) == 0).all()  # padded words: zero
    sum(image.mean() for image in out.images).backward()
    assert all(p.grad is not None for p in generator.parameters())
    # without the maps the images are the same
    generator.eval()
    with torch.no_grad():
        images = generator(z, sentence, words, pad_mask).images
        again = generator(z, sentence, words, pad_mask, return_attention=False)
    assert again.attention == []
    for a, b in zip(images, again.images, strict=True):
        torch.testing.assert_close(a, b)


def test_generator_state_dict_uses_attngans_names():
    keys = set(_generator(3).state_dict())
    for key in (
        "ca_net.fc.weight",
        "h_net1.fc.0.weight",
        "h_net1.fc.1.running_mean",
        "h_net1.upsample4.1.weight",
        "img_net1.img.0.weight",
        "h_net2.att.conv_context.weight",
        "h_net2.residual.0.block.3.weight",
        "h_net3.upsample.2.weight",
        "img_net3.img.0.weight",
    ):
        assert key in keys, key


def test_bad_inputs_raise_errors_naming_the_argument():
    generator = _generator(2)
    z, sentence, words, pad_mask = _inputs()
    with pytest.raises(ValueError, match=r"z must be \[B, z_dim=6\], got shape \(4, 5\)"):
        generator(z[:, :5], sentence, words, pad_mask)
    with pytest.raises(ValueError, match=r"sentence must be \[B=4, D=8\], got shape \(3, 8\)"):
        generator(z, sentence[:3], words, pad_mask)
    with pytest.raises(ValueError, match=r"words must be \[B=4, D=8, T\], got shape \(4, 7, 5\)"):
        generator(z, sentence, words[:, :7], pad_mask)
    with pytest.raises(ValueError, match=r"pad_mask must be \[B=4, T=5\], got shape \(4, 4\)"):
        generator(z, sentence, words, pad_mask[:, :4])
    with pytest.raises(TypeError, match="pad_mask must be a bool"):
        generator(z, sentence, words, pad_mask.long())
    with pytest.raises(ValueError, match="stages must be 1, 2 or 3"):
        AttnGANGenerator(D, stages=4)
    with pytest.raises(ValueError, match="ngf must be a positive integer"):
        AttnGANGenerator(D, ngf=0)
    discriminators = AttnGANDiscriminators(D, 8, 4, 3)
    assert discriminators.image_sizes == (64, 128, 256)
    assert all(d.score_unconditional is not None for d in discriminators)
    with pytest.raises(ValueError, match=r"image must be \[N, 3, 128, 128\]"):
        discriminators[1].score_images(torch.randn(2, 3, 64, 64), torch.randn(2, D))


# ----------------------------------------------------------------------------- the training task

TINY = [
    "model=attngan",
    "gan.ngf=4",
    "gan.ndf=4",
    "gan.z_dim=8",
    "gan.projection_dim=8",
    "attngan.condition_dim=4",
    "attngan.residual_blocks=1",
    f"text.embedding_dim={D}",
    "train.batch_size=4",
]


def _batch(stages, seed):
    generator = torch.Generator().manual_seed(seed)

    def captions():
        words = torch.randint(1, VOCAB, (B, T), generator=generator)
        mask = pad_mask_of(LENGTHS, T)
        return words.masked_fill(mask, 0), LENGTHS.clone(), mask

    right, lengths, mask = captions()
    wrong, wrong_lengths, wrong_mask = captions()
    images = {s: torch.rand(B, 3, s, s, generator=generator) * 2 - 1 for s in stage_sizes(stages)}
    return Batch(
        images=images,
        captions=right,
        caption_lengths=lengths,
        caption_mask=mask,
        wrong_captions=wrong,
        wrong_lengths=wrong_lengths,
        wrong_mask=wrong_mask,
        class_ids=torch.tensor([0, 1, 0, 2]),
        indices=torch.arange(B),
        wrong_indices=torch.arange(B).roll(1),
        keys=[str(i) for i in range(B)],
    )


def _encoders():
    torch.manual_seed(7)
    text = TextEncoder(VOCAB, embedding_dim=6, hidden_dim=D)
    image = ImageEncoder(D, input_size=32, width=4)
    return text, image


def _task(stages, *overrides, seed=0, preview_batch=None, preview_captions=()):
    config = load_config(overrides=[*TINY, f"attngan.stages={stages}", *overrides])
    torch.manual_seed(seed)
    text, image = _encoders()
    return AttnGANTask(
        config,
        text,
        image,
        Runtime(torch.device("cpu")),
        preview_batch=preview_batch,
        preview_captions=preview_captions,
    )


def _parameters(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


@pytest.mark.parametrize(("stages", "wrong_pairs"), [(3, "class"), (2, "roll")])
def test_one_step_gives_every_loss_and_trains_g_and_every_d(stages, wrong_pairs):
    task = _task(stages, f"gan.wrong_pairs={wrong_pairs}")
    assert not any(p.requires_grad for p in task.text_encoder.parameters())
    assert not any(p.requires_grad for p in task.image_encoder.parameters())
    assert len(task.d_optimizers) == stages
    before_g, before_d = _parameters(task.generator), _parameters(task.discriminators)
    before_text, before_image = task.text_encoder.state_dict(), copy.deepcopy(task.image_encoder.state_dict())
    losses = task.train_step(_batch(stages, 1))
    sizes = stage_sizes(stages)
    expected = {f"d_loss_{s}" for s in sizes} | {"d_loss", "g_adversarial", "g_damsm", "g_kl", "g_loss"}
    assert expected <= set(losses)
    assert all(math.isfinite(v.item()) for v in losses.values()), losses
    torch.testing.assert_close(losses["d_loss"], sum(losses[f"d_loss_{s}"] for s in sizes))
    weights = task.config.attngan
    total = losses["g_adversarial"] + weights.damsm_weight * losses["g_damsm"] + weights.kl_weight * losses["g_kl"]
    torch.testing.assert_close(losses["g_loss"], total)
    after_g, after_d = _parameters(task.generator), _parameters(task.discriminators)
    assert all(not torch.equal(before_g[n], after_g[n]) for n in before_g), "every G parameter is trained"
    for i in range(stages):  # each stage's D took its step
        assert any(not torch.equal(before_d[n], after_d[n]) for n in before_d if n.startswith(f"{i}."))
    for name, value in task.text_encoder.state_dict().items():
        assert torch.equal(value, before_text[name])
    for name, value in task.image_encoder.state_dict().items():  # eval mode: not even BatchNorm statistics
        assert torch.equal(value, before_image[name])
    assert all(p.requires_grad for p in task.discriminators.parameters())


def test_state_dict_round_trip_gives_identical_next_steps():
    first = _task(2)
    first.train_step(_batch(2, 1))
    state = copy.deepcopy(first.state_dict())
    rng = torch.get_rng_state()
    expected = {k: v.item() for k, v in first.train_step(_batch(2, 2)).items()}
    expected_samples = first.sample(_batch(2, 3), torch.zeros(B, 8))

    resumed = _task(2, seed=99)
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    assert {k: v.item() for k, v in resumed.train_step(_batch(2, 2)).items()} == expected
    torch.testing.assert_close(resumed.sample(_batch(2, 3), torch.zeros(B, 8)), expected_samples, rtol=0, atol=0)

    with pytest.raises(ValueError, match=r"attngan\.stages must match"):
        _task(1).load_state_dict(state)


def test_sample_gives_final_images_and_attention_and_a_preview(tmp_path):
    preview = _batch(2, 5)
    task = _task(2, preview_batch=preview, preview_captions=["a", "b", "c", "d"])
    batch = _batch(2, 4)
    images = task.sample(batch)
    assert images.shape == (B, 3, 128, 128)
    images, attention = task.sample(batch, return_attention=True)
    assert [tuple(a.shape) for a in attention] == [(B, T, 64, 64)]
    picture = attention_grid(images, attention[-1], [["w"] * int(n) for n in LENGTHS], path=tmp_path / "a.png")
    assert picture.size == Image.open(tmp_path / "a.png").size
    assert task.preview().width > 0
    with pytest.raises(ValueError, match=r"batch.images must hold the sizes \[64, 128\]"):
        task.train_step(_batch(1, 4))


# ----------------------------------------------------------------------------- the picture


def test_attention_grid_draws_a_row_per_sample_and_a_column_per_word(tmp_path):
    images = torch.zeros(2, 3, 32, 32)
    images[0, 0] = 1.0  # sample 0: red-ish
    attention = torch.zeros(2, 6, 8, 8)
    attention[:, 0, :4] = 1.0  # word 0 attends to the top half
    attention[:, 1, 4:] = 1.0  # word 1 to the bottom half
    captions = ["a red box", ["one", "two"]]
    path = tmp_path / "attention.png"
    grid = attention_grid(images, attention, captions, path=path, max_words=4)
    height = line_height(font(11))
    assert grid.size == (GAP + 4 * (32 + GAP), GAP + 2 * (32 + PAD + height + PAD + GAP))
    assert Image.open(path).size == grid.size
    array = np.asarray(grid.convert("RGB")).astype(int)
    first = array[GAP : GAP + 32, GAP : GAP + 32]
    assert (first == np.asarray(Image.fromarray(np.full((32, 32, 3), [255, 128, 128], np.uint8)))).all()
    word0 = array[GAP : GAP + 32, GAP + 32 + GAP : GAP + 2 * (32 + GAP) - GAP]
    assert word0[:8, :, 0].mean() > word0[-8:, :, 0].mean() + 50  # hot (red) on top, cold below
    assert word0[-8:, :, 2].mean() > word0[:8, :, 2].mean() + 50
    label_band = array[GAP + 32 + PAD : GAP + 32 + PAD + height, GAP + 32 + GAP : GAP + 2 * (32 + GAP)]
    assert (label_band < 200).any()  # the word is written under its map
    second_row_third_word = array[GAP + 32 + 2 * PAD + height + 2 * GAP :, GAP + 3 * (32 + GAP) :]
    assert (second_row_third_word == 255).all()  # "one two": no third column in that row
    with pytest.raises(ValueError, match=r"attention must be \[N=2, T, h, w\]"):
        attention_grid(images, attention[:1], captions)
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        attention_grid(images, attention, captions[:1])
