"""Readers for the layouts users already have, each returning a TextImageDataset.

- StackGAN/AttnGAN releases (CUB-200-2011 birds, Oxford-102 flowers, and our synthetic set):
    root/train|test/filenames.pickle          list of keys, e.g. '001.Black_footed_Albatross/Black_Footed_..._796111'
    root/train|test/class_info.pickle         optional, one class id per key
    root/train|test/char-CNN-RNN-embeddings.pickle   optional, [N, 10, 1024] sentence embeddings
    root/text/<key>.txt  (or text_c10/)       one caption per line
    root/CUB_200_2011/images/<key>.jpg, root/images/<key>.jpg or root/jpg/<key>.jpg
    root/CUB_200_2011/images.txt + bounding_boxes.txt   optional: CUB's boxes, cropped as AttnGAN does
    root/captions.pickle                      optional: AttnGAN's vocabulary, reused when present
- COCO 2014: root/annotations/captions_{train,val}2014.json and root/{train,val}2014/<file_name>.
- A folder of images, each with a same-named .txt of captions beside it; sub-folders are classes.
"""

import json
import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from t2ifast.data.captions import Vocabulary, read_captions_pickle, tokenize
from t2ifast.data.dataset import TextImageDataset
from t2ifast.data.errors import DataError
from t2ifast.data.images import attngan_crop_box

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")
SPLITS = ("train", "test")


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _load_pickle(path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except FileNotFoundError as error:
        raise DataError(path, "file not found") from error
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DataError(path, f"not a readable pickle ({error})") from error


def read_caption_file(path):
    """The non-empty lines of a caption file."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError as error:
        raise DataError(path, "caption file not found") from error
    except OSError as error:
        raise DataError(path, f"cannot read caption file ({error})") from error
    return [line.strip() for line in text.splitlines() if line.strip()]


def _resolve_vocabulary(vocabulary, root, train_caption_lines):
    """A Vocabulary: as given, from a captions.pickle path, root/captions.pickle, or built from training captions."""
    if isinstance(vocabulary, Vocabulary):
        return vocabulary
    if vocabulary is not None:
        return read_captions_pickle(vocabulary)[2]
    if (Path(root) / "captions.pickle").is_file():
        return read_captions_pickle(Path(root) / "captions.pickle")[2]
    return Vocabulary.build(tokenize(line) for lines in train_caption_lines() for line in lines)


# --- StackGAN / AttnGAN layout -------------------------------------------------------------------------------


def _find_images_dir(root, first_key):
    for candidate in (root / "CUB_200_2011" / "images", root / "images", root / "jpg", root):
        for name in (first_key, Path(first_key).name):
            if (candidate / f"{name}.jpg").is_file() or (candidate / f"{name}.png").is_file():
                return candidate
    for candidate in (root / "CUB_200_2011" / "images", root / "images", root / "jpg"):
        if candidate.is_dir():
            return candidate
    raise DataError(root, "no images folder (looked for CUB_200_2011/images, images, jpg)")


def _image_path(images_dir, key):
    for name in (key, Path(key).name):
        for suffix in (".jpg", ".png"):
            if (images_dir / f"{name}{suffix}").is_file():
                return images_dir / f"{name}{suffix}"
    return images_dir / f"{key}.jpg"  # absent: reported, naming this path, when the dataset is built


class _TextIndex:
    """Caption files by key: text/<key>.txt directly, else (Oxford-102: text_c10/class_xxxxx/<name>.txt) by name."""

    def __init__(self, root):
        self.dirs = [d for d in (root / "text", root / "text_c10") if d.is_dir()]
        if not self.dirs:
            raise DataError(root, "no caption folder (looked for text/ and text_c10/)")
        self._by_name = None

    def path(self, key):
        for folder in self.dirs:
            if (folder / f"{key}.txt").is_file():
                return folder / f"{key}.txt"
        if self._by_name is None:
            self._by_name = {}
            for folder in self.dirs:
                for path in folder.rglob("*.txt"):
                    self._by_name.setdefault(path.stem, path)
        return self._by_name.get(Path(key).name, self.dirs[0] / f"{key}.txt")


def _cub_boxes(root, keys, image_paths):
    """AttnGAN's crop boxes from CUB's bounding_boxes.txt + images.txt (None where those files are absent)."""
    cub = root / "CUB_200_2011"
    images_txt, boxes_txt = cub / "images.txt", cub / "bounding_boxes.txt"
    if not (images_txt.is_file() and boxes_txt.is_file()):
        return None
    names = {}
    for line_number, line in enumerate(images_txt.read_text().splitlines(), 1):
        if line.strip():
            parts = line.split()
            if len(parts) != 2:
                raise DataError(images_txt, f"line {line_number}: expected '<id> <file>', got {line!r}")
            names[parts[0]] = parts[1][: -len(Path(parts[1]).suffix)] if Path(parts[1]).suffix else parts[1]
    boxes = {}
    for line_number, line in enumerate(boxes_txt.read_text().splitlines(), 1):
        if line.strip():
            parts = line.split()
            if len(parts) != 5 or parts[0] not in names:
                raise DataError(boxes_txt, f"line {line_number}: expected '<id> x y w h' for an id of images.txt")
            boxes[names[parts[0]]] = [float(v) for v in parts[1:]]
    crop_boxes = []
    for key, path in zip(keys, image_paths, strict=True):
        if key not in boxes:
            raise DataError(boxes_txt, f"no bounding box for {key}")
        try:
            with Image.open(path) as image:
                width, height = image.size
        except OSError as error:
            raise DataError(path, f"cannot read image header ({error})") from error
        crop_boxes.append(attngan_crop_box(boxes[key], width, height))
    return np.asarray(crop_boxes, dtype=np.int64)


def read_stackgan(
    root, split="train", *, vocabulary=None, crop_to_bbox=True, max_captions=None, unknown_words="drop", skip_bad=False
):
    """A split of a StackGAN/AttnGAN-layout dataset (CUB birds, Oxford-102 flowers, the synthetic set).

    vocabulary: a Vocabulary, a path to an AttnGAN captions.pickle, or None (root/captions.pickle when it
    exists, else built from the training captions). max_captions: use at most this many captions per image
    (AttnGAN uses 10). crop_to_bbox: apply CUB's bounding boxes when the CUB files are there.
    """
    _check_split(split)
    root = Path(root)
    keys = [str(k) for k in _load_pickle(root / split / "filenames.pickle")]
    if not keys:
        raise DataError(root / split / "filenames.pickle", "lists no files")
    texts = _TextIndex(root)
    images_dir = _find_images_dir(root, keys[0])

    def captions_of(split_keys):
        lines = []
        for key in split_keys:
            path = texts.path(key)
            try:
                lines.append(read_caption_file(path)[:max_captions])
            except DataError:
                if not skip_bad:
                    raise
                lines.append([])  # reported as a skipped sample when the dataset is built
        return lines

    captions = captions_of(keys)
    train_lines = (lambda: captions) if split == "train" else (lambda: captions_of(_train_keys(root)))
    vocabulary = _resolve_vocabulary(vocabulary, root, train_lines)

    class_ids = None
    if (root / split / "class_info.pickle").is_file():
        class_ids = np.asarray(_load_pickle(root / split / "class_info.pickle"), dtype=np.int64)
        if len(class_ids) != len(keys):
            raise DataError(root / split / "class_info.pickle", f"{len(class_ids)} class ids for {len(keys)} files")
    embeddings = None
    embeddings_path = root / split / "char-CNN-RNN-embeddings.pickle"
    if embeddings_path.is_file():
        embeddings = np.asarray(_load_pickle(embeddings_path), dtype=np.float32)
        if len(embeddings) != len(keys):
            raise DataError(embeddings_path, f"{len(embeddings)} embeddings for {len(keys)} files")

    image_paths = [_image_path(images_dir, key) for key in keys]
    missing = [path for path in image_paths if not path.is_file()]
    if missing and not skip_bad:
        raise DataError(missing[0], f"image file not found ({len(missing)} of the files listed are missing)")
    crop_boxes = None
    if crop_to_bbox and not missing:
        crop_boxes = _cub_boxes(root, keys, image_paths)
    return TextImageDataset(
        keys,
        image_paths,
        captions,
        vocabulary,
        caption_sources=[texts.path(key) for key in keys],
        class_ids=class_ids,
        crop_boxes=crop_boxes,
        embeddings=embeddings,
        unknown_words=unknown_words,
        skip_bad=skip_bad,
        name=f"{root.name}/{split}",
    )


def _train_keys(root):
    return [str(k) for k in _load_pickle(root / "train" / "filenames.pickle")]


# --- COCO ------------------------------------------------------------------------------------------------------


def _coco_split(root, split, year):
    name = {"train": "train", "test": "val"}[split] + str(year)
    return root / "annotations" / f"captions_{name}.json", root / name


def _read_coco_json(path, images_dir):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as error:
        raise DataError(path, "file not found") from error
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(path, f"not a readable COCO captions json ({error})") from error
    try:
        file_names = {image["id"]: image["file_name"] for image in data["images"]}
        captions = defaultdict(list)
        for annotation in data["annotations"]:
            captions[annotation["image_id"]].append(annotation["caption"].strip())
    except (KeyError, TypeError) as error:
        raise DataError(path, f"missing COCO field {error}") from error
    ids = sorted(file_names)
    keys = [Path(file_names[i]).stem for i in ids]
    return keys, [images_dir / file_names[i] for i in ids], [captions.get(i, []) for i in ids]


def read_coco(root, split="train", *, year=2014, vocabulary=None, unknown_words="drop", skip_bad=False):
    """COCO captions: 'train' reads captions_train2014.json, 'test' captions_val2014.json (as AttnGAN does)."""
    _check_split(split)
    root = Path(root)
    keys, image_paths, captions = _read_coco_json(*_coco_split(root, split, year))
    captions_file = _coco_split(root, split, year)[0]
    train_captions = (
        (lambda: captions) if split == "train" else (lambda: _read_coco_json(*_coco_split(root, "train", year))[2])
    )
    vocabulary = _resolve_vocabulary(vocabulary, root, train_captions)
    return TextImageDataset(
        keys,
        image_paths,
        captions,
        vocabulary,
        caption_sources=[f"{captions_file} (image {path.name})" for path in image_paths],
        unknown_words=unknown_words,
        skip_bad=skip_bad,
        name=f"coco/{split}",
    )


# --- a folder of images with captions beside them --------------------------------------------------------------


def read_folder(root, *, vocabulary=None, unknown_words="drop", skip_bad=False):
    """Every image under root with a same-named .txt beside it; the first sub-folder level names the classes."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "folder not found")
    image_paths = sorted(p for p in root.rglob("*") if p.suffix in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not image_paths:
        raise DataError(root, "no images found")
    caption_paths = [p.with_suffix(".txt") for p in image_paths]
    captions = []
    for path in caption_paths:
        try:
            captions.append(read_caption_file(path))
        except DataError:
            if not skip_bad:
                raise
            captions.append([])
    keys = [str(p.relative_to(root).with_suffix("")) for p in image_paths]
    class_names = sorted({p.relative_to(root).parts[0] for p in image_paths if len(p.relative_to(root).parts) > 1})
    class_ids = None
    if class_names and all(len(p.relative_to(root).parts) > 1 for p in image_paths):
        index = {name: i for i, name in enumerate(class_names)}
        class_ids = [index[p.relative_to(root).parts[0]] for p in image_paths]
    vocabulary = _resolve_vocabulary(vocabulary, root, lambda: captions)
    return TextImageDataset(
        keys,
        image_paths,
        captions,
        vocabulary,
        caption_sources=caption_paths,
        class_ids=class_ids,
        unknown_words=unknown_words,
        skip_bad=skip_bad,
        name=root.name,
    )


def open_dataset(path, split="train", **options):
    """Pick the reader from what is in the folder: StackGAN layout, COCO, or images with captions beside them."""
    root = Path(path)
    if (root / split / "filenames.pickle").is_file():
        return read_stackgan(root, split, **options)
    if (root / "annotations").is_dir():
        return read_coco(root, split, **options)
    if split != "train":
        raise DataError(root, f"a plain image folder has no {split!r} split")
    return read_folder(root, **options)


__all__ = ["open_dataset", "read_caption_file", "read_coco", "read_folder", "read_stackgan"]
