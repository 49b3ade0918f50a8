"""The built-in synthetic captioned-shapes set: one coloured shape per image with known attributes, several
captions per image in varied phrasing, written to disk in the StackGAN/AttnGAN layout so every loader path runs
on it. Because the attributes are known, a classifier predicting them (ATTRIBUTES below) measures whether a
generated image matches its caption.

Layout written under the returned folder:
    images/<class>/<name>.jpg     text/<class>/<name>.txt (one caption per line)
    train|test/filenames.pickle   train|test/class_info.pickle (class id = shape × colour)
    captions.pickle (AttnGAN: train/test captions, ixtoword, wordtoix; the vocabulary of the training captions)
    attributes.json               every image's attributes; manifest.json (the generation parameters)

Everything is a function of the seed: image i is drawn from its own generator seeded with (seed, i).
"""

import json
import math
import os
import pickle
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from t2ifast.data.captions import Vocabulary, tokenize, write_captions_pickle

SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 30),
    "orange": (250, 140, 20),
    "purple": (140, 40, 180),
    "pink": (250, 120, 190),
    "cyan": (30, 210, 220),
}
BACKGROUNDS = {"black": (10, 10, 10), "white": (245, 245, 245), "gray": (128, 128, 128), "brown": (110, 70, 40)}
SIZES = {"small": 0.12, "medium": 0.18, "large": 0.25}  # shape radius as a fraction of the image side
# 3×3 grid of centres, kept inside the central region so the 76/64 random crop never cuts a shape away
POSITIONS = {
    f"{row}{'-' if row and col else ''}{col}" or "center": (x, y)
    for row, y in (("top", 0.32), ("", 0.5), ("bottom", 0.68))
    for col, x in (("left", 0.32), ("", 0.5), ("right", 0.68))
}
# the attribute vocabulary an evaluation classifier predicts (one head per attribute)
ATTRIBUTES = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
    "background": tuple(BACKGROUNDS),
}
NUM_CLASSES = len(SHAPES) * len(COLOURS)
FORMAT_VERSION = 1


def class_id(shape, colour):
    """The class of an image: its shape × colour combination."""
    return SHAPES.index(shape) * len(COLOURS) + list(COLOURS).index(colour)


def class_name(index):
    shape, colour = SHAPES[index // len(COLOURS)], list(COLOURS)[index % len(COLOURS)]
    return f"{index:03d}.{colour}_{shape}"


# --- captions ----------------------------------------------------------------------------------------------------

_SHAPE_WORDS = {
    "circle": ["circle", "disc", "round dot", "circle"],
    "square": ["square", "square", "box", "block"],
    "triangle": ["triangle", "triangle", "triangular shape"],
    "diamond": ["diamond", "rhombus", "diamond shape"],
    "star": ["star", "five pointed star", "star shape"],
    "hexagon": ["hexagon", "six sided shape", "hexagon"],
}
_COLOUR_WORDS = {
    "red": ["red", "red", "bright red"],
    "green": ["green", "green", "dark green"],
    "blue": ["blue", "blue", "deep blue"],
    "yellow": ["yellow", "yellow", "golden yellow"],
    "orange": ["orange", "orange"],
    "purple": ["purple", "violet"],
    "pink": ["pink", "pink", "light pink"],
    "cyan": ["cyan", "turquoise"],
}
_SIZE_WORDS = {
    "small": ["small", "tiny", "little"],
    "medium": ["medium", "medium sized", "mid sized"],
    "large": ["large", "big", "huge"],
}
_BACKGROUND_WORDS = {
    "black": ["black", "dark"],
    "white": ["white", "plain white"],
    "gray": ["gray", "grey"],
    "brown": ["brown", "dull brown"],
}
_PLACE_WORDS = {"top": "top", "bottom": "bottom", "left": "left", "right": "right"}


def _pick(rng, options):
    """A uniform choice from a list (numpy's rng.choice is slow on small lists of strings)."""
    return options[int(rng.integers(len(options)))]


def _position_phrase(position, rng):
    if position == "center":
        return _pick(rng, ["in the middle", "at the center", "in the centre", "right in the middle"])
    words = " ".join(_PLACE_WORDS[p] for p in position.split("-"))
    if "-" in position:
        return _pick(rng, [f"in the {words} corner", f"at the {words}", f"near the {words} corner"])
    return _pick(rng, [f"on the {words}", f"at the {words}", f"near the {words} edge", f"towards the {words}"])


def _background_phrase(background, rng):
    word = _pick(rng, _BACKGROUND_WORDS[background])
    return _pick(
        rng, [f"on a {word} background", f"against a {word} backdrop", f"over a {word} background", f"on {word}"]
    )


def make_caption(attributes, rng):
    """One caption for these attributes, with a randomly chosen template, synonyms and word order."""
    size = _pick(rng, _SIZE_WORDS[attributes["size"]])
    colour = _pick(rng, _COLOUR_WORDS[attributes["colour"]])
    shape = _pick(rng, _SHAPE_WORDS[attributes["shape"]])
    where = _position_phrase(attributes["position"], rng)
    ground = _background_phrase(attributes["background"], rng)
    article = "an" if size[0] in "aeiou" else "a"
    noun = f"{size} {colour} {shape}"
    verb = _pick(rng, ["sits", "is drawn", "appears", "is placed", "is shown"])
    templates = [
        f"{article} {noun} {where} {ground}.",
        f"there is {article} {noun} {where}, {ground}.",
        f"this image shows {article} {noun} {ground}, {where}.",
        f"{ground}, {article} {noun} {verb} {where}.",
        f"the picture contains one {colour} {shape}; it is {size} and {verb} {where} {ground}.",
        f"{where} {article} {noun} {verb} {ground}",
        f"{article} {colour} {shape} of {attributes['size']} size {verb} {where}. the background is "
        f"{_pick(rng, _BACKGROUND_WORDS[attributes['background']])}.",
    ]
    caption = _pick(rng, templates)
    return caption[0].upper() + caption[1:]


# --- drawing -----------------------------------------------------------------------------------------------------


def _polygon(shape, cx, cy, r, angle):
    if shape == "square":
        points = [(r, math.pi / 4 + k * math.pi / 2) for k in range(4)]
    elif shape == "triangle":
        points = [(r, -math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)]
    elif shape == "diamond":
        points = [(r if k % 2 == 0 else r * 0.6, k * math.pi / 2) for k in range(4)]
    elif shape == "star":
        points = [(r if k % 2 == 0 else r * 0.45, -math.pi / 2 + k * math.pi / 5) for k in range(10)]
    elif shape == "hexagon":
        points = [(r, k * math.pi / 3) for k in range(6)]
    else:
        raise ValueError(shape)
    return [(cx + radius * math.cos(a + angle), cy + radius * math.sin(a + angle)) for radius, a in points]


def draw(attributes, size, rng):
    """The image for these attributes: drawn at 2-4× and downsampled (anti-aliased edges), with mild colour jitter."""
    scale = 4 if size <= 64 else 2
    side = size * scale
    jitter = rng.integers(-12, 13, size=6)
    background = tuple(np.clip(np.add(BACKGROUNDS[attributes["background"]], jitter[:3]), 0, 255).tolist())
    colour = tuple(np.clip(np.add(COLOURS[attributes["colour"]], jitter[3:]), 0, 255).tolist())
    image = Image.new("RGB", (side, side), background)
    canvas = ImageDraw.Draw(image)
    cx, cy = attributes["center"][0] * side, attributes["center"][1] * side
    r = attributes["radius"] * side
    if attributes["shape"] == "circle":
        canvas.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        canvas.polygon(_polygon(attributes["shape"], cx, cy, r, attributes["rotation"]), fill=colour)
    return image.resize((size, size), Image.BOX)


def sample_attributes(seed, index):
    """The attributes of image `index`: uniform choices, then small jitter of the centre, radius and rotation."""
    rng = np.random.default_rng([seed, index])
    attributes = {name: _pick(rng, values) for name, values in ATTRIBUTES.items()}
    x, y = POSITIONS[attributes["position"]]
    attributes["center"] = [float(x + rng.uniform(-0.04, 0.04)), float(y + rng.uniform(-0.04, 0.04))]
    attributes["radius"] = float(SIZES[attributes["size"]] * rng.uniform(0.92, 1.08))
    attributes["rotation"] = float(rng.uniform(-0.3, 0.3)) if attributes["shape"] != "circle" else 0.0
    return attributes, rng


def _render_range(folder, size, seed, captions_per_image, start, stop):
    records = []
    for index in range(start, stop):
        attributes, rng = sample_attributes(seed, index)
        cls = class_id(attributes["shape"], attributes["colour"])
        key = f"{class_name(cls)}/{attributes['colour']}_{attributes['shape']}_{index:06d}"
        draw(attributes, size, rng).save(folder / "images" / f"{key}.jpg", quality=95)
        captions = [make_caption(attributes, rng) for _ in range(captions_per_image)]
        (folder / "text" / f"{key}.txt").write_text("\n".join(captions) + "\n")
        records.append({"key": key, "class_id": cls, **attributes, "captions": captions})
    return records


def _write_pickle(path, value):
    with open(path, "wb") as f:
        pickle.dump(value, f, protocol=2)


def _write_set(folder, num_images, size, seed, captions_per_image, test_fraction, workers):
    for cls in range(NUM_CLASSES):
        (folder / "images" / class_name(cls)).mkdir(parents=True)
        (folder / "text" / class_name(cls)).mkdir(parents=True)
    chunks = [(start, min(start + 256, num_images)) for start in range(0, num_images, 256)]
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(workers) as pool:
            jobs = [pool.submit(_render_range, folder, size, seed, captions_per_image, a, b) for a, b in chunks]
            parts = [job.result() for job in jobs]
            records = [record for part in parts for record in part]
    else:
        records = [r for a, b in chunks for r in _render_range(folder, size, seed, captions_per_image, a, b)]

    # the last `test_fraction` of a seeded permutation is the test split
    order = np.random.default_rng([seed, num_images]).permutation(num_images)
    num_test = round(num_images * test_fraction)
    splits = {"train": sorted(order[: num_images - num_test]), "test": sorted(order[num_images - num_test :])}
    for split, indices in splits.items():
        (folder / split).mkdir()
        _write_pickle(folder / split / "filenames.pickle", [records[i]["key"] for i in indices])
        _write_pickle(folder / split / "class_info.pickle", [records[i]["class_id"] for i in indices])
        for i in indices:
            records[i]["split"] = split

    tokenised = {s: [tokenize(c) for i in idx for c in records[i]["captions"]] for s, idx in splits.items()}
    vocabulary = Vocabulary.build(tokenised["train"])
    encoded = {s: [vocabulary.encode(c)[0] for c in captions] for s, captions in tokenised.items()}
    write_captions_pickle(folder / "captions.pickle", encoded["train"], encoded["test"], vocabulary)
    table = [{k: v for k, v in record.items() if k != "captions"} for record in records]
    (folder / "attributes.json").write_text(json.dumps({"attributes": ATTRIBUTES, "images": table}, indent=0))


def generate_synthetic(
    root, num_images=2000, size=64, seed=0, *, captions_per_image=5, test_fraction=0.2, workers=None
):
    """The path of the synthetic set with these parameters under root, generating it if it is not there yet.

    Generation writes into a temporary folder beside the result and renames it into place, so an interrupted
    run or a concurrent one (e.g. several ranks of a distributed job) never leaves a half-written set.
    """
    if num_images < 2:
        raise ValueError("num_images must be at least 2")
    if size < 8:
        raise ValueError("size must be at least 8 pixels")
    root = Path(root).expanduser()
    final = root / f"shapes-{size}px-{num_images}-seed{seed}-c{captions_per_image}"
    manifest = {
        "format_version": FORMAT_VERSION,
        "num_images": num_images,
        "size": size,
        "seed": seed,
        "captions_per_image": captions_per_image,
        "test_fraction": test_fraction,
    }
    if (final / "manifest.json").is_file() and json.loads((final / "manifest.json").read_text()) == manifest:
        return final
    if final.exists():
        raise FileExistsError(f"{final} exists but is not a complete synthetic set with these parameters")
    root.mkdir(parents=True, exist_ok=True)
    workers = workers or min(os.cpu_count() or 1, 8)
    temporary = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.tmp-"))
    try:
        _write_set(temporary, num_images, size, seed, captions_per_image, test_fraction, workers)
        (temporary / "manifest.json").write_text(json.dumps(manifest, indent=1))  # written last: marks complete
        try:
            os.rename(temporary, final)
        except OSError:
            if not (final / "manifest.json").is_file():  # not a concurrent generator that finished first
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return final


def load_attributes(folder):
    """{key: attributes} from a generated set's attributes.json."""
    data = json.loads((Path(folder) / "attributes.json").read_text())
    return {record["key"]: record for record in data["images"]}
