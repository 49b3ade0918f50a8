"""Bad input: every failure names the file at fault, or, where the user asked to skip bad samples, is counted
and reported; never an anonymous crash mid-epoch."""

import json
import pickle
import shutil

import pytest
from data_testing import requires_dali, write_coco, write_cub

from t2ifast.data import DataError, make_loader, read_coco, read_stackgan

BACKENDS = ["torch", pytest.param("dali", marks=requires_dali)]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("cub")
    write_cub(root, num_train=9, num_test=3)
    return root


@pytest.fixture
def cub(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "cub")
    return tmp_path / "cub"


def _train_keys(root):
    return pickle.load(open(root / "train" / "filenames.pickle", "rb"))


def _loader(dataset, backend, **options):
    extra = {"num_workers": 0} if backend == "torch" else {"device": "cpu"}
    return make_loader(dataset, 4, backend, shuffle=False, **extra, **options)


def test_filenames_list_naming_an_absent_image(cub):
    key = _train_keys(cub)[4]
    (cub / "CUB_200_2011" / "images" / f"{key}.jpg").unlink()
    with pytest.raises(DataError, match=f"{key}.jpg: image file not found") as error:
        read_stackgan(cub, "train")
    assert error.value.path.endswith(f"{key}.jpg")
    with pytest.warns(UserWarning, match=f"1 bad samples skipped: .*{key}.jpg"):
        dataset = read_stackgan(cub, "train", skip_bad=True)
    assert len(dataset) == 8 and key not in dataset.keys and len(dataset.skipped) == 1


def test_missing_caption_file(cub):
    key = _train_keys(cub)[2]
    (cub / "text" / f"{key}.txt").unlink()
    with pytest.raises(DataError, match=f"{key}.txt: caption file not found"):
        read_stackgan(cub, "train")
    with pytest.warns(UserWarning, match="1 bad samples skipped"):
        assert len(read_stackgan(cub, "train", skip_bad=True)) == 8


def test_empty_caption_file(cub):
    key = _train_keys(cub)[1]
    (cub / "text" / f"{key}.txt").write_text("\n  \n")
    with pytest.raises(DataError, match=f"{key}.txt: no caption"):
        read_stackgan(cub, "train")
    with pytest.warns(UserWarning, match=f"{key}.txt \\(no caption"):
        dataset = read_stackgan(cub, "train", skip_bad=True)
    assert key not in dataset.keys


def test_unknown_words_are_dropped_and_counted_or_refused(cub):
    # the vocabulary comes from the training captions; a test caption may have words it lacks
    test_key = pickle.load(open(cub / "test" / "filenames.pickle", "rb"))[0]
    lines = (cub / "text" / f"{test_key}.txt").read_text().splitlines()
    (cub / "text" / f"{test_key}.txt").write_text("\n".join(["the zebra bird has qwerty wings", *lines[1:]]))
    with pytest.warns(UserWarning, match="2 caption words are not in the vocabulary and were dropped"):
        dataset = read_stackgan(cub, "test")
    assert dataset.unknown_word_counts == {"zebra": 1, "qwerty": 1}
    assert dataset.captions[0][0] == "the zebra bird has qwerty wings"
    assert dataset.vocabulary.decode(dataset.table.tokens[0]) == "the bird has wings"
    with pytest.raises(DataError, match=f"{test_key}.txt: words not in the vocabulary: \\['qwerty', 'zebra'\\]"):
        read_stackgan(cub, "test", unknown_words="error")
    # a caption file whose every word is unknown leaves the sample without a caption
    (cub / "text" / f"{test_key}.txt").write_text("zebra qwerty\n")
    with pytest.raises(DataError, match=f"{test_key}.txt: no caption has a word"):
        read_stackgan(cub, "test")


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_image_is_named_mid_epoch(cub, backend):
    keys = _train_keys(cub)
    bad = cub / "CUB_200_2011" / "images" / f"{keys[6]}.jpg"
    dataset = read_stackgan(cub, "train", crop_to_bbox=False)
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 20)
    batches = []
    with pytest.raises(DataError, match=f"{keys[6]}.jpg: cannot decode image") as error:
        for batch in _loader(dataset, backend, sizes=(32,)):
            batches.append(batch)
    assert error.value.path == str(bad)
    if backend == "torch":
        assert len(batches) == 1  # the batch before the bad file was delivered


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_image_skipped_when_asked(cub, backend):
    keys = _train_keys(cub)
    dataset = read_stackgan(cub, "train", crop_to_bbox=False)
    (cub / "CUB_200_2011" / "images" / f"{keys[3]}.jpg").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=f"1 bad samples skipped: .*{keys[3]}.jpg"):
        loader = _loader(dataset, backend, sizes=(32,), skip_bad=True)  # DALI scans the images first
        seen = [key for batch in loader for key in batch.keys]  # the torch loader skips as it goes
    assert sorted(seen) == sorted(k for k in keys if k != keys[3])
    assert len(loader.skipped) == 1 and keys[3] in loader.skipped.summary()


def test_malformed_dataset_files_are_named(cub):
    (cub / "train" / "class_info.pickle").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataError, match=r"class_info\.pickle: 2 class ids for 9 files"):
        read_stackgan(cub, "train")
    (cub / "train" / "filenames.pickle").write_bytes(b"\x80\x04truncated")
    with pytest.raises(DataError, match=r"filenames\.pickle: not a readable pickle"):
        read_stackgan(cub, "train")
    shutil.rmtree(cub / "test")
    with pytest.raises(DataError, match=r"test/filenames\.pickle: file not found"):
        read_stackgan(cub, "test")


def test_bounding_box_missing_for_an_image(cub):
    boxes = cub / "CUB_200_2011" / "bounding_boxes.txt"
    boxes.write_text("\n".join(boxes.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(DataError, match=r"bounding_boxes\.txt: no bounding box for"):
        read_stackgan(cub, "train")


def test_broken_coco_json(tmp_path):
    write_coco(tmp_path)
    path = tmp_path / "annotations" / "captions_train2014.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"captions_train2014\.json: not a readable COCO captions json"):
        read_coco(tmp_path, "train")
    path.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    with pytest.raises(DataError, match=r"captions_train2014\.json: missing COCO field 'file_name'"):
        read_coco(tmp_path, "train")
