"""Readers on small fixtures written in the released formats: CUB-200-2011 and Oxford-102 (StackGAN/AttnGAN
layout), COCO 2014 captions json, and a plain folder of images with captions beside them."""

import pickle

import numpy as np
import pytest
import torch
from data_testing import random_captions, random_image, write_coco, write_cub, write_flowers, write_jpeg
from PIL import Image

from t2ifast.data import (
    Vocabulary,
    make_loader,
    open_dataset,
    read_captions_pickle,
    read_coco,
    read_folder,
    read_stackgan,
    tokenize,
    write_captions_pickle,
)
from t2ifast.data.images import attngan_crop_box, load_image


def _attngan_crop(path, bbox):
    """AttnGAN's get_imgs crop, restated independently of t2ifast."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    r = int(np.maximum(bbox[2], bbox[3]) * 0.75)
    center_x, center_y = int((2 * bbox[0] + bbox[2]) / 2), int((2 * bbox[1] + bbox[3]) / 2)
    y1, y2 = np.maximum(0, center_y - r), np.minimum(height, center_y + r)
    x1, x2 = np.maximum(0, center_x - r), np.minimum(width, center_x + r)
    return image.crop([x1, y1, x2, y2])


def test_cub(tmp_path):
    info = write_cub(tmp_path)
    train = read_stackgan(tmp_path, "train")
    test = read_stackgan(tmp_path, "test")
    assert len(train) == 6 and len(test) == 3
    assert train.keys == pickle.load(open(tmp_path / "train" / "filenames.pickle", "rb"))
    # vocabulary from the training captions only
    train_words = {w for key in train.keys for line in info[key][1] for w in tokenize(line)}
    assert set(train.vocabulary.index_to_word[1:]) == train_words
    assert test.vocabulary.index_to_word == train.vocabulary.index_to_word
    assert train.class_ids.tolist() == [info[k][2] for k in train.keys]
    assert train.embeddings.shape == (6, 10, 16)
    for i, key in enumerate(train.keys):
        bbox, captions, _ = info[key]
        assert train.captions[i] == captions
        path = tmp_path / "CUB_200_2011" / "images" / f"{key}.jpg"
        expected = np.asarray(_attngan_crop(path, bbox))
        got = np.asarray(load_image(train.image_paths[i], train.crop_boxes[i]))
        assert np.array_equal(got, expected)
        width, height = Image.open(path).size
        assert tuple(train.crop_boxes[i]) == attngan_crop_box(bbox, width, height)


def test_cub_embeddings_follow_the_chosen_caption(tmp_path):
    write_cub(tmp_path)
    dataset = read_stackgan(tmp_path, "train")
    raw = np.asarray(pickle.load(open(tmp_path / "train" / "char-CNN-RNN-embeddings.pickle", "rb")), np.float32)
    batch = next(iter(make_loader(dataset, 6, "torch", sizes=(32,), num_workers=0, max_words=40)))
    for b in range(6):
        index = int(batch.indices[b])
        # the caption drawn is one of the sample's lines; its embedding is that line's row
        lines = [dataset.vocabulary.decode(dataset.vocabulary.encode(tokenize(c))[0]) for c in dataset.captions[index]]
        row = lines.index(dataset.vocabulary.decode(batch.captions[b]))
        assert torch.equal(batch.embeddings[b], torch.from_numpy(raw[index, row]))
        assert batch.wrong_embeddings[b].shape == (16,)


def test_oxford_102(tmp_path):
    write_flowers(tmp_path)
    dataset = read_stackgan(tmp_path, "train")
    assert dataset.keys == ["image_00001", "image_00002", "image_00003", "image_00004"]
    assert dataset.image_paths[0] == tmp_path / "jpg" / "image_00001.jpg"
    assert dataset.captions[1] == (tmp_path / "text_c10" / "class_00002" / "image_00002.txt").read_text().splitlines()
    assert dataset.class_ids.tolist() == [1, 2, 1, 2] and dataset.crop_boxes is None
    assert len(read_stackgan(tmp_path, "test")) == 2


def test_captions_pickle_vocabulary_is_reused(tmp_path):
    write_cub(tmp_path)
    words = sorted({w for p in (tmp_path / "text").rglob("*.txt") for w in tokenize(p.read_text())}, reverse=True)
    vocabulary = Vocabulary([*words, "extra"])
    write_captions_pickle(tmp_path / "captions.pickle", [], [], vocabulary)
    assert read_stackgan(tmp_path, "train").vocabulary.index_to_word == vocabulary.index_to_word
    # or a captions.pickle elsewhere, e.g. the one a published DAMSM encoder was trained with
    other = tmp_path / "damsm_captions.pickle"
    write_captions_pickle(other, [], [], Vocabulary(words))
    assert read_stackgan(tmp_path, "train", vocabulary=other).vocabulary.index_to_word == ["<end>", *words]


def test_dataset_captions_written_as_attngan_captions_pickle(tmp_path):
    write_cub(tmp_path)
    train, test = read_stackgan(tmp_path, "train"), read_stackgan(tmp_path, "test")
    write_captions_pickle(tmp_path / "out.pickle", train.encoded_captions(), test.encoded_captions(), train.vocabulary)
    train_captions, test_captions, vocabulary = read_captions_pickle(tmp_path / "out.pickle")
    assert len(train_captions) == 60 and len(test_captions) == 30
    second_caption = train.captions[0][1]  # AttnGAN's order: filenames × captions per image
    assert vocabulary.decode(train_captions[1]) == " ".join(tokenize(second_caption))


def test_max_captions(tmp_path):
    write_cub(tmp_path)
    dataset = read_stackgan(tmp_path, "train", max_captions=3)
    assert all(len(c) == 3 for c in dataset.captions) and dataset.table.tokens.shape[0] == 18


def test_coco(tmp_path):
    write_coco(tmp_path)
    train, test = read_coco(tmp_path, "train"), read_coco(tmp_path, "test")
    assert len(train) == 5 and len(test) == 2
    assert all(p.parent.name == "train2014" and p.is_file() for p in train.image_paths)
    assert all(len(c) == 5 for c in train.captions) and train.class_ids is None
    assert test.vocabulary.index_to_word == train.vocabulary.index_to_word
    batch = next(iter(make_loader(train, 5, "torch", sizes=(32, 64), num_workers=0)))
    assert batch.images[64].shape == (5, 3, 64, 64) and (batch.class_ids == -1).all()
    assert (batch.wrong_indices != batch.indices).all()
    assert isinstance(open_dataset(tmp_path, "test"), type(test))


def test_folder_with_classes(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        for n in range(3):
            write_jpeg(tmp_path / cls / f"{n}.jpg", random_image(rng, 40, 40))
            (tmp_path / cls / f"{n}.txt").write_text("\n".join(random_captions(rng, 2)))
    dataset = read_folder(tmp_path)
    assert dataset.keys == ["cats/0", "cats/1", "cats/2", "dogs/0", "dogs/1", "dogs/2"]
    assert dataset.class_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(open_dataset(tmp_path)) == 6


def test_flat_folder_has_no_classes(tmp_path):
    rng = np.random.default_rng(1)
    for n in range(3):
        write_jpeg(tmp_path / f"photo{n}.png", random_image(rng, 30, 40))
        (tmp_path / f"photo{n}.txt").write_text("A photo.\n\nAnother line")
    dataset = read_folder(tmp_path)
    assert dataset.class_ids is None and dataset.captions[0] == ["A photo.", "Another line"]


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="split"):
        read_stackgan(tmp_path, "val")
