"""The synthetic captioned-shapes set: determinism, layout, attributes that match the pixels and the captions."""

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from t2ifast.data import ATTRIBUTES, generate_synthetic, load_attributes, read_captions_pickle, read_stackgan, tokenize
from t2ifast.data.synthetic import BACKGROUNDS, COLOURS, NUM_CLASSES, class_id


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), num_images=120, size=64, seed=3, workers=2)


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


def test_layout_is_the_stackgan_one(shapes):
    train = pickle.load(open(shapes / "train" / "filenames.pickle", "rb"))
    test = pickle.load(open(shapes / "test" / "filenames.pickle", "rb"))
    assert len(train) + len(test) == 120 and len(test) == 24 and not set(train) & set(test)
    classes = pickle.load(open(shapes / "train" / "class_info.pickle", "rb"))
    attributes = load_attributes(shapes)
    for key, cls in zip(train, classes, strict=True):
        assert (shapes / "images" / f"{key}.jpg").is_file()
        lines = (shapes / "text" / f"{key}.txt").read_text().splitlines()
        assert len(lines) == 5 and all(lines)
        record = attributes[key]
        assert cls == record["class_id"] == class_id(record["shape"], record["colour"])
        assert record["split"] == "train"
    assert 0 <= min(classes) and max(classes) < NUM_CLASSES
    assert not list(shapes.parent.glob(".*tmp*"))  # the temporary folder was renamed away


def test_deterministic_by_seed(shapes, tmp_path):
    again = generate_synthetic(tmp_path, num_images=120, size=64, seed=3, workers=1)
    assert _files(again) == _files(shapes)
    for name in _files(shapes):
        if name.suffix in (".jpg", ".txt", ".pickle"):
            assert (again / name).read_bytes() == (shapes / name).read_bytes(), name
    other = generate_synthetic(tmp_path, num_images=120, size=64, seed=4, workers=1)
    assert (other / "attributes.json").read_text() != (shapes / "attributes.json").read_text()


def test_cached_set_is_reused(shapes):
    stamp = (shapes / "manifest.json").stat().st_mtime_ns
    assert generate_synthetic(shapes.parent, num_images=120, size=64, seed=3) == shapes
    assert (shapes / "manifest.json").stat().st_mtime_ns == stamp


def test_incomplete_set_is_not_taken_for_a_cached_one(tmp_path):
    (tmp_path / "shapes-64px-10-seed0-c5").mkdir()
    with pytest.raises(FileExistsError, match="not a complete synthetic set"):
        generate_synthetic(tmp_path, num_images=10, size=64)


def test_pixels_show_the_attributes(shapes):
    attributes = load_attributes(shapes)
    for key, record in list(attributes.items())[:40]:
        image = np.asarray(Image.open(shapes / "images" / f"{key}.jpg"), dtype=np.float64)
        x, y = (int(c * 64) for c in record["center"])
        centre = image[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(0)
        assert np.abs(centre - COLOURS[record["colour"]]).max() < 40, (key, centre)
        corners = np.stack([image[1, 1], image[1, -2], image[-2, 1], image[-2, -2]])
        # at least the corners far from the shape show the background colour
        far = [c for c, (cx, cy) in zip(corners, [(0, 0), (1, 0), (0, 1), (1, 1)], strict=True)
               if abs(cx - record["center"][0]) + abs(cy - record["center"][1]) > 0.6]  # fmt: skip
        for corner in far:
            assert np.abs(corner - BACKGROUNDS[record["background"]]).max() < 40, (key, corner)


def test_captions_name_the_attributes(shapes):
    synonyms = {
        "shape": {"circle": {"circle", "disc", "dot"}, "square": {"square", "box", "block"},
                  "triangle": {"triangle", "triangular"}, "diamond": {"diamond", "rhombus"},
                  "star": {"star"}, "hexagon": {"hexagon", "six"}},
        "size": {"small": {"small", "tiny", "little"}, "medium": {"medium", "mid"}, "large": {"large", "big", "huge"}},
        "colour": {"purple": {"purple", "violet"}, "cyan": {"cyan", "turquoise"}},
        "background": {"gray": {"gray", "grey"}, "black": {"black", "dark"}},
    }  # fmt: skip
    attributes = load_attributes(shapes)
    phrasings = set()
    for key, record in attributes.items():
        for line in (shapes / "text" / f"{key}.txt").read_text().splitlines():
            words = set(tokenize(line))
            phrasings.add(line.split()[0])
            for attribute, table in synonyms.items():
                expected = table.get(record[attribute], {record[attribute]})
                assert words & expected, (line, attribute, record[attribute])
            vertical = record["position"].split("-")[0]
            if vertical in ("top", "bottom"):
                assert vertical in words, line
    assert len(phrasings) >= 5  # varied openings / word order


def test_vocabulary_and_attribute_table(shapes):
    _, _, vocabulary = read_captions_pickle(shapes / "captions.pickle")
    assert 70 <= len(vocabulary) <= 130
    table = json.loads((shapes / "attributes.json").read_text())
    assert {k: list(v) for k, v in ATTRIBUTES.items()} == table["attributes"]
    dataset = read_stackgan(shapes, "test")
    assert dataset.vocabulary.index_to_word == vocabulary.index_to_word  # the saved vocabulary is the one used
    assert len(dataset) == 24 and dataset.class_ids is not None


@pytest.mark.parametrize("size", [128, 256])
def test_other_sizes(tmp_path, size):
    folder = generate_synthetic(tmp_path, num_images=6, size=size, seed=0, workers=1)
    key = pickle.load(open(folder / "train" / "filenames.pickle", "rb"))[0]
    assert Image.open(folder / "images" / f"{key}.jpg").size == (size, size)
