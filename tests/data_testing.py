"""Helpers for the data tests: small datasets written in exactly the released formats, and the DALI marker."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from t2ifast.data import dali_available

# DALI tests run wherever DALI is installed; with T2IFAST_REQUIRE_DALI=1 (CI) a missing DALI fails them instead.
if os.environ.get("T2IFAST_REQUIRE_DALI") == "1" and not dali_available():
    raise RuntimeError("T2IFAST_REQUIRE_DALI=1 but nvidia.dali cannot be imported: pip install '.[dali]'")
requires_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed (pip install '.[dali]')")

WORDS = "a the bird has red blue wings small beak long tail white belly yellow crown black eyes and with".split()


def random_image(rng, width, height):
    """A smooth random RGB image (smooth so JPEG keeps it close to the array)."""
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def write_jpeg(path, array, quality=95):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=quality)


def random_captions(rng, count, low=4, high=25):
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(low, high)))) + "." for _ in range(count)]


def _dump(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(value, f, protocol=2)


def write_cub(root, num_train=6, num_test=3, seed=0, embeddings=True):
    """A tiny CUB-200-2011 as the StackGAN/AttnGAN release lays it out (three classes, non-square images,
    bounding boxes, 10 captions per image, char-CNN-RNN embeddings). Returns {key: (bbox, captions)}."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    keys, info, lines_images, lines_boxes = [], {}, [], []
    for n in range(num_train + num_test):
        cls = n % 3
        key = f"{classes[cls]}/{classes[cls].split('.')[1]}_{n:04d}_{100 + n}"
        width, height = int(rng.integers(60, 100)), int(rng.integers(50, 90))
        write_jpeg(root / "CUB_200_2011" / "images" / f"{key}.jpg", random_image(rng, width, height))
        bbox = [float(rng.integers(0, width // 3)), float(rng.integers(0, height // 3)), width / 2, height / 2]
        lines_images.append(f"{n + 1} {key}.jpg")
        lines_boxes.append(f"{n + 1} " + " ".join(str(v) for v in bbox))
        captions = random_captions(rng, 10)
        text = root / "text" / f"{key}.txt"
        text.parent.mkdir(parents=True, exist_ok=True)
        text.write_text("\n".join(captions) + "\n")
        keys.append(key)
        info[key] = (bbox, captions, cls + 1)
    (root / "CUB_200_2011" / "images.txt").write_text("\n".join(lines_images) + "\n")
    (root / "CUB_200_2011" / "bounding_boxes.txt").write_text("\n".join(lines_boxes) + "\n")
    for split, split_keys in (("train", keys[:num_train]), ("test", keys[num_train:])):
        _dump(root / split / "filenames.pickle", split_keys)
        _dump(root / split / "class_info.pickle", [info[k][2] for k in split_keys])
        if embeddings:
            _dump(root / split / "char-CNN-RNN-embeddings.pickle", rng.standard_normal((len(split_keys), 10, 16)))
    return info


def write_flowers(root, num_train=4, num_test=2, seed=1):
    """A tiny Oxford-102 as StackGAN releases it: jpg/image_xxxxx.jpg, text_c10/class_xxxxx/image_xxxxx.txt."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    keys, classes = [], []
    for n in range(num_train + num_test):
        key, cls = f"image_{n + 1:05d}", n % 2 + 1
        write_jpeg(root / "jpg" / f"{key}.jpg", random_image(rng, 70, 64))
        text = root / "text_c10" / f"class_{cls:05d}" / f"{key}.txt"
        text.parent.mkdir(parents=True, exist_ok=True)
        text.write_text("\n".join(random_captions(rng, 10)) + "\n")
        keys.append(key)
        classes.append(cls)
    _dump(root / "train" / "filenames.pickle", keys[:num_train])
    _dump(root / "train" / "class_info.pickle", classes[:num_train])
    _dump(root / "test" / "filenames.pickle", keys[num_train:])
    _dump(root / "test" / "class_info.pickle", classes[num_train:])


def write_coco(root, num_train=5, num_val=2, seed=2):
    """A tiny COCO 2014: annotations/captions_{train,val}2014.json and the image folders."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    next_id = 1
    for split, count in (("train2014", num_train), ("val2014", num_val)):
        images, annotations = [], []
        for _ in range(count):
            image_id = int(rng.integers(1, 10**6))
            name = f"COCO_{split}_{image_id:012d}.jpg"
            write_jpeg(root / split / name, random_image(rng, 80, 60))
            images.append({"id": image_id, "file_name": name, "width": 80, "height": 60})
            for caption in random_captions(rng, 5):
                annotations.append({"id": next_id, "image_id": image_id, "caption": caption})
                next_id += 1
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        data = {"info": {}, "images": images, "annotations": annotations, "licenses": []}
        (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(data))
