"""The torch fallback loader and the DALI loader (CPU pipeline here): batch structure, epochs, shards, last-batch
policy, augmentation, and the same images from both with augmentation off."""

import dataclasses

import numpy as np
import pytest
import torch
from data_testing import requires_dali, write_cub
from PIL import Image

from t2ifast.data import Batch, TorchLoader, generate_synthetic, make_loader, read_stackgan, tokenize
from t2ifast.data.images import load_image, transform

BACKENDS = ["torch", pytest.param("dali", marks=requires_dali)]
# DALI and Pillow decode JPEG with libjpeg-turbo alike; their antialiased linear resizes differ by rounding only:
# measured here, under 0.5 grey level on average and at most 6 levels on a pixel at 2x downscaling, 13 at 4x
RESIZE_MEAN_TOLERANCE, RESIZE_MAX_TOLERANCE = 1.0 / 127.5, 16.0 / 127.5


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = generate_synthetic(tmp_path_factory.mktemp("synthetic"), num_images=50, size=64, seed=1, workers=1)
    return read_stackgan(folder, "train")  # 40 samples


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = tmp_path_factory.mktemp("cub")
    write_cub(root, num_train=8)
    return read_stackgan(root, "train")


def _loader(dataset, backend, batch_size, **options):
    if backend == "torch":
        options.setdefault("num_workers", 0)
    else:
        options.setdefault("device", "cpu")
    return make_loader(dataset, batch_size, backend, **options)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_structure(shapes, backend):
    loader = _loader(shapes, backend, 8, sizes=(64, 16, 32), max_words=12)
    assert loader.backend == backend
    batch = next(iter(loader))
    assert isinstance(batch, Batch) and len(batch) == 8
    assert sorted(batch.images) == [16, 32, 64]
    for size, images in batch.images.items():
        assert images.shape == (8, 3, size, size) and images.dtype == torch.float32
        assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.1
    assert batch.captions.shape == batch.caption_mask.shape == batch.wrong_captions.shape == (8, 12)
    assert batch.captions.dtype == torch.long and batch.caption_mask.dtype == torch.bool
    assert torch.equal(batch.caption_mask, torch.arange(12) >= batch.caption_lengths[:, None])
    assert ((batch.captions == 0) == batch.caption_mask).all()  # no word is 0, every pad is
    assert torch.equal(batch.class_ids, shapes.class_ids[batch.indices])
    assert (shapes.class_ids[batch.wrong_indices] != batch.class_ids).all()
    assert batch.keys == [shapes.keys[i] for i in batch.indices]
    assert batch.embeddings is None
    moved = batch.to("cpu")
    assert [f.name for f in dataclasses.fields(moved)] == [f.name for f in dataclasses.fields(batch)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("last_batch", ["partial", "drop"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_epochs_and_shards_cover_each_sample_once(shapes, backend, last_batch, shuffle):
    num_shards, batch_size = 3, 4
    for epoch in range(2):
        seen = []
        loaders = [
            _loader(
                shapes, backend, batch_size, shuffle=shuffle, shard_id=s, num_shards=num_shards, last_batch=last_batch
            )
            for s in range(num_shards)
        ]
        for shard, loader in enumerate(loaders):
            for _ in range(epoch + 1):  # epoch 0: first epoch; epoch 1: the second epoch of each loader
                indices = [i for batch in loader for i in batch.indices.tolist()]
            shard_size = (shard + 1) * 40 // 3 - shard * 40 // 3
            expected = shard_size - (shard_size % batch_size if last_batch == "drop" else 0)
            assert len(indices) == len(set(indices)) == expected, (shard, indices)
            assert len(loader) == -(-expected // batch_size)
            seen += indices
        if last_batch == "partial":
            assert sorted(seen) == list(range(40))  # every sample once across the shards, none repeated
        if not shuffle:
            assert seen == sorted(seen)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shuffle_changes_order_between_epochs(shapes, backend):
    loader = _loader(shapes, backend, 8, shuffle=True, seed=5)
    first = [i for b in loader for i in b.indices.tolist()]
    second = [i for b in loader for i in b.indices.tolist()]
    assert sorted(first) == sorted(second) == list(range(40))
    assert first != second and first != sorted(first)


@pytest.mark.parametrize("dataset_name", ["shapes", "cub"])
@requires_dali
def test_dali_and_torch_give_the_same_images_without_augmentation(request, dataset_name):
    dataset = request.getfixturevalue(dataset_name)
    options = {"sizes": (16, 32, 64), "augment": False, "shuffle": False}
    torch_batches = list(_loader(dataset, "torch", 8, **options))
    dali_batches = list(_loader(dataset, "dali", 8, **options))
    assert len(torch_batches) == len(dali_batches)
    for ours, theirs in zip(torch_batches, dali_batches, strict=True):
        assert ours.keys == theirs.keys
        for size in (16, 32, 64):
            difference = (ours.images[size] - theirs.images[size]).abs()
            if dataset_name == "shapes" and size == 64:
                assert difference.max() <= 1e-5  # same decoder, no resize: identical
            else:
                assert difference.mean() < RESIZE_MEAN_TOLERANCE, (size, difference.mean())
                assert difference.max() < RESIZE_MAX_TOLERANCE, (size, difference.max())


def test_torch_transform_is_attngan_crop_and_flip(cub):
    image = load_image(cub.image_paths[0], cub.crop_boxes[0])
    out = transform(image, (32, 64), augment=True, rng=np.random.default_rng(7))
    rng = np.random.default_rng(7)
    width, height = image.size
    side = int(64 * 76 / 64)
    shape = (side, int(side * height / width)) if width <= height else (int(side * width / height), side)
    scaled = image.resize(shape, Image.BILINEAR)  # torchvision Resize(int), AttnGAN's transforms.Scale
    left, top = int(rng.integers(0, scaled.size[0] - 63)), int(rng.integers(0, scaled.size[1] - 63))
    crop = scaled.crop((left, top, left + 64, top + 64))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    expected = torch.from_numpy(np.asarray(crop, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert torch.allclose(out[64], expected, atol=1e-6)
    small = torch.from_numpy(np.asarray(crop.resize((32, 32), Image.BILINEAR), np.float32)).permute(2, 0, 1)
    assert torch.allclose(out[32], small / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_augmentation_crops_and_flips(shapes, backend):
    plain = next(iter(_loader(shapes, backend, 40, augment=False, shuffle=False))).images[64]
    augmented = [
        next(iter(_loader(shapes, backend, 40, augment=True, shuffle=False, seed=s))).images[64] for s in (1, 2)
    ]
    assert not torch.allclose(augmented[0], augmented[1])
    assert (augmented[0] - plain).abs().mean() > 0.01
    # a random crop of the 76/64 enlargement: each image is close to some 64x64 window of the enlarged plain image,
    # possibly mirrored; check the mean colour agrees (shape and background stay in view)
    assert (augmented[0].mean((2, 3)) - plain.mean((2, 3))).abs().max() < 0.25


@pytest.mark.parametrize("backend", BACKENDS)
def test_text_is_drawn_from_the_dataset(shapes, backend):
    batch = next(iter(_loader(shapes, backend, 16, max_words=30, caption_mode="truncate")))
    vocabulary = shapes.vocabulary
    for b, index in enumerate(batch.indices.tolist()):
        # with truncation to 30 words (longer than any caption here) the caption is one of the sample's lines
        lines = {vocabulary.decode(vocabulary.encode(tokenize(line))[0]) for line in shapes.captions[index]}
        assert vocabulary.decode(batch.captions[b]) in lines
        wrong = int(batch.wrong_indices[b])
        wrong_lines = {vocabulary.decode(vocabulary.encode(tokenize(line))[0]) for line in shapes.captions[wrong]}
        assert vocabulary.decode(batch.wrong_captions[b]) in wrong_lines


def test_make_loader_choices(shapes):
    with pytest.raises(ValueError, match="backend"):
        make_loader(shapes, 4, "jax")
    with pytest.raises(ValueError, match="last_batch"):
        make_loader(shapes, 4, "torch", last_batch="fill")
    with pytest.raises(ValueError, match="shard_id"):
        make_loader(shapes, 4, "torch", shard_id=2, num_shards=2)
    assert isinstance(make_loader(shapes, 4, "torch", num_threads=3, device="cpu"), TorchLoader)


@pytest.mark.parametrize("workers", [0, 2])
def test_torch_loader_workers_agree(shapes, workers):
    batches = list(_loader(shapes, "torch", 16, num_workers=workers, seed=3))
    reference = list(_loader(shapes, "torch", 16, num_workers=0, seed=3))
    for a, b in zip(batches, reference, strict=True):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.images[64], b.images[64])


@requires_dali
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for DALI's mixed (nvJPEG) decode")
def test_dali_gpu_decode_matches_cpu(cub):
    options = {"sizes": (32, 64), "augment": False, "shuffle": False}
    gpu = list(_loader(cub, "dali", 4, device="gpu", **options))
    cpu = list(_loader(cub, "dali", 4, device="cpu", **options))
    for on_gpu, on_cpu in zip(gpu, cpu, strict=True):
        assert on_gpu.keys == on_cpu.keys and on_gpu.images[64].is_cuda
        for size in (32, 64):
            difference = (on_gpu.images[size].cpu() - on_cpu.images[size]).abs()
            # nvJPEG and libjpeg-turbo differ in IDCT and chroma upsampling by a few grey levels
            assert difference.mean() < 2.0 / 127.5 and difference.max() < 24.0 / 127.5


def test_auto_falls_back_to_torch_without_dali(shapes, monkeypatch):
    import t2ifast.data.loader as loader_module

    monkeypatch.setattr(loader_module, "dali_available", lambda: False)
    assert isinstance(make_loader(shapes, 4, "auto", num_workers=0), TorchLoader)
    with pytest.raises(ImportError, match=r"t2ifast\[dali\]"):
        make_loader(shapes, 4, "dali")


@requires_dali
def test_auto_picks_dali_when_installed(shapes):
    assert make_loader(shapes, 4, "auto", device="cpu").backend == "dali"
