"""python -m t2ifast.sample's command line: what it draws and labels, and its one-line errors and warnings, on tiny
run folders written from untrained models (no training: each test takes well under a second)."""

import re

import pytest
import torch
from PIL import Image
from run_testing import write_run

from t2ifast import sample
from t2ifast.data import Vocabulary
from t2ifast.training.config import load_config

WORDS = ["a", "red", "blue", "green", "circle", "star", "square", "on", "white", "black"]
TINY = ["gan.ngf=4", "gan.ndf=4", "gan.z_dim=8", "gan.projection_dim=4", "text.embedding_dim=8",
        "text.word_embedding_dim=8", "data.max_words=6", "train.device=cpu"]  # fmt: skip
MAX_WORDS = 6


def _write_run(folder, model, *, style_encoder=True):
    config = load_config(overrides=[f"model={model}", *TINY, "stackgan.stage2_steps=0"])
    return write_run(folder, config, Vocabulary(WORDS), style_encoder=style_encoder)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _write_run(tmp_path_factory.mktemp("sample") / "run", "gan-int-cls")


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a call without --out writes samples.png here, not into the checkout


def _main(capsys, *argv):
    """(exit message or None, stdout, stderr) of python -m t2ifast.sample argv."""
    try:
        sample.main([str(a) for a in argv])
        message = None
    except SystemExit as exit:
        message = str(exit.code)
    out, err = capsys.readouterr()
    return message, out, err


def _fails(capsys, *argv):
    message, out, err = _main(capsys, *argv)
    assert message is not None, f"expected an error, got {out!r} {err!r}"
    assert message.startswith("t2ifast.sample: ") and "\n" not in message and "Traceback" not in err, message
    return message.removeprefix("t2ifast.sample: ")


def _works(capsys, *argv):
    message, out, err = _main(capsys, *argv)
    assert message is None, message
    assert out.startswith("written ")
    return err


def _warnings(err):
    return [line.removeprefix("t2ifast.sample: warning: ") for line in err.splitlines()]


def test_captions_to_images(run, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert _works(capsys, run, "a red circle", "a blue star", "-n", "3", "--device", "cpu", "--out", out) == ""
    picture = Image.open(out)
    assert picture.format == "PNG" and picture.width > picture.height  # 2 rows of 3 captioned 128-px tiles


@pytest.mark.parametrize("device", ["gpu", "cuda:7", "tpu", "cuda:x"])
def test_a_device_this_machine_does_not_have_is_an_error(run, tmp_path, capsys, device):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    message = _fails(capsys, run, "a red circle", "--device", device, "--out", tmp_path / "s.png")
    assert message.startswith("--device ") and repr(device) in message
    assert not (tmp_path / "s.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_an_error(run, tmp_path, capsys):
    message = _fails(capsys, run, "a red circle", "--device", "cuda", "--out", tmp_path / "s.png")
    assert message == "--device is 'cuda', but torch sees no CUDA GPU on this machine"


def test_out_must_be_an_image_file_pillow_writes(run, tmp_path, capsys):
    (tmp_path / "a_file.png").write_bytes(b"")
    (tmp_path / "a_folder").mkdir()
    for option in ("--out", "--attention"):
        message = _fails(capsys, run, "a red circle", option, tmp_path / "x.txt")
        assert message.startswith(f"{option} must name an image file ending in .png, .jpg, .jpeg")
        assert message.endswith("x.txt'")
        message = _fails(capsys, run, "a red circle", option, tmp_path / "a_folder")
        assert message.startswith(f"{option}: ") and "a_folder is a folder" in message
        message = _fails(capsys, run, "a red circle", option, tmp_path / "a_file.png" / "x.png")
        assert message.endswith("a_file.png is a file, not a folder")
    assert "give two files" in _fails(capsys, run, "a red circle", "--out", "same.png", "--attention", "same.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file.png", "a_folder"]  # nothing written


def test_out_folders_are_made_and_the_suffix_picks_the_format(run, tmp_path, capsys):
    for name, format in (("deep/er/s.jpg", "JPEG"), ("s.WEBP", "WEBP"), ("s.bmp", "BMP")):
        _works(capsys, run, "a red circle", "-n", "1", "--device", "cpu", "--out", tmp_path / name)
        assert Image.open(tmp_path / name).format == format
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left


def test_unknown_words_are_ignored_with_a_warning(run, tmp_path, capsys, monkeypatch):
    labels = []
    monkeypatch.setattr(sample, "caption_grid", lambda images, captions, **kw: labels.append(captions) or _blank())
    err = _works(capsys, run, "a red circle with dots", "a blue star", "-n", "2", "--out", tmp_path / "s.png")
    assert _warnings(err) == ["'a red circle with dots': words not in the run's vocabulary, ignored: with, dots"]
    assert labels == [["a red circle", "a red circle", "a blue star", "a blue star"]]  # what the model read


def test_no_known_word_is_an_error(run, tmp_path, capsys):
    message = _fails(capsys, run, "a red circle", "zzz qqq zzz", "--out", tmp_path / "s.png")
    assert message == "caption 2 ('zzz qqq zzz') has no word of the model's vocabulary (unknown: zzz, qqq)"


def test_a_caption_longer_than_max_words_is_cut_with_a_warning_and_labelled_with_the_words_used(
    run, tmp_path, capsys, monkeypatch
):
    labels = []
    monkeypatch.setattr(sample, "caption_grid", lambda images, captions, **kw: labels.append(captions) or _blank())
    long = " ".join(["a red circle on white"] * 30)  # 150 words
    err = _works(capsys, run, long, "-n", "1", "--out", tmp_path / "s.png")
    (warning,) = _warnings(err)
    assert re.fullmatch(
        rf"'a red circle on white a red .*…': the model reads at most {MAX_WORDS} words \(data.max_words\); the "
        rf"first {MAX_WORDS} of its 150 known words are used, the picture is labelled with them",
        warning,
    ), warning
    assert labels == [["a red circle on white a …"]]


def test_long_captions_do_not_make_tall_pictures(run, tmp_path, capsys):
    _works(capsys, run, " ".join(["a red circle on white"] * 30), "-n", "1", "--out", tmp_path / "long.png")
    _works(capsys, run, "a red circle on white a", "-n", "1", "--out", tmp_path / "short.png")
    assert Image.open(tmp_path / "long.png").height <= Image.open(tmp_path / "short.png").height + 20


@pytest.mark.parametrize("caption", ["", "   ", "\t\n"])
def test_an_empty_caption_is_an_error(run, tmp_path, capsys, caption):
    assert _fails(capsys, run, "a red circle", caption, "--out", tmp_path / "s.png") == "caption 2 is empty"
    assert _fails(capsys, run, "--interpolate", "a red circle", caption) == "--interpolate caption B is empty"
    message = _fails(capsys, run, "?!", "--out", tmp_path / "s.png")
    assert message == "caption 1 ('?!') has no words (only punctuation or non-ASCII characters)"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["-n", "0"], "-n/--per-caption must be at least 1, got 0"),
        (["--per-caption", "-3"], "-n/--per-caption must be at least 1, got -3"),
        (["-n", "257"], "-n/--per-caption must be at most 256, got 257"),
        (["--steps", "1"], "--steps must be at least 2, got 1"),
        (["--steps", "1000"], "--steps must be at most 64, got 1000"),
    ],
)
def test_counts_out_of_range_name_only_the_bad_option(run, tmp_path, capsys, options, expected):
    assert _fails(capsys, run, "a red circle", *options, "--out", tmp_path / "s.png") == expected
    assert not (tmp_path / "s.png").exists()


def test_argparse_errors_are_one_line_too(run, capsys):
    message = _fails(capsys, run, "a red circle", "-n", "x")
    assert message.startswith("argument -n/--per-caption: invalid int value: 'x'")


def test_conflicting_modes_are_errors(run, tmp_path, capsys, style_image):
    out = tmp_path / "s.png"
    message = _fails(capsys, run, "a green star", "--interpolate", "a red circle", "a blue star", "--out", out)
    assert message.startswith("captions and --interpolate do not go together")
    message = _fails(capsys, run, "--interpolate", "a red circle", "a blue star", "--style-from", style_image)
    assert message == "--interpolate and --style-from do not go together: choose one"
    message = _fails(capsys, run, "a red circle", "--style-from", style_image, "--attention", tmp_path / "a.png")
    assert message.startswith("--attention goes with captions → images, not with")
    assert _fails(capsys, run, "--out", out).startswith("give captions to draw")
    message = _fails(capsys, run, "--style-from", style_image, "a red circle", "--out", out)
    assert message.startswith("--style-from needs captions, given before it")
    assert not out.exists()


def test_options_without_effect_are_warned_about(run, tmp_path, capsys, style_image):
    out = tmp_path / "s.png"
    err = _works(capsys, run, "a red circle", "--steps", "4", "-n", "1", "--out", out)
    assert _warnings(err) == ["--steps only applies to --interpolate; ignored"]
    err = _works(capsys, run, "--interpolate", "a red circle", "a blue star", "-n", "2", "--out", out)
    assert _warnings(err) == ["-n/--per-caption has no effect with --interpolate; ignored"]
    err = _works(capsys, run, "a red circle", "--style-from", style_image, "-n", "2", "--out", out)
    assert _warnings(err) == [
        "-n/--per-caption has no effect with --style-from (one image per style image and caption); ignored"
    ]
    assert _works(capsys, run, "--interpolate", "a red circle", "a blue star", "--steps", "3", "--out", out) == ""


@pytest.fixture
def style_image(tmp_path):
    """A 120×40 picture: red on the left third, green in the middle third, blue on the right third."""
    image = Image.new("RGB", (120, 40), (255, 0, 0))
    image.paste((0, 255, 0), (40, 0, 80, 40))
    image.paste((0, 0, 255), (80, 0, 120, 40))
    image.save(tmp_path / "wide.png")
    return tmp_path / "wide.png"


def test_style_images_are_centre_cropped(style_image):
    pixels = sample._read_image(style_image)
    assert pixels.shape == (3, 64, 64)
    green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None]
    torch.testing.assert_close(pixels, green.expand(3, 64, 64), atol=0.02, rtol=0)  # the middle square only


def test_style_transfer_and_bad_style_images(run, tmp_path, capsys, style_image):
    out = tmp_path / "s.png"
    _works(capsys, run, "a red circle", "a blue star", "--style-from", style_image, style_image, "--out", out)
    assert Image.open(out).size[0] > Image.open(out).size[1]  # 2 rows (styles) × 3 columns (source, 2 captions)
    (tmp_path / "folder").mkdir()
    (tmp_path / "text.png").write_text("not a picture")
    message = _fails(capsys, run, "a red circle", "--style-from", tmp_path / "folder", "--out", out)
    assert message == f"--style-from: {tmp_path / 'folder'} is a folder, not an image"
    message = _fails(capsys, run, "a red circle", "--style-from", tmp_path / "text.png", "--out", out)
    assert message == f"--style-from: {tmp_path / 'text.png'} is not an image Pillow can read"
    message = _fails(capsys, run, "a red circle", "--style-from", tmp_path / "none.png", "--out", out)
    assert message == f"--style-from: image {tmp_path / 'none.png'} does not exist"


def test_interpolation_grid_labels(run, tmp_path, capsys, monkeypatch):
    grids = []

    def image_grid(images, **kwargs):
        grids.append((images.shape, kwargs))
        return _blank()

    monkeypatch.setattr(sample, "image_grid", image_grid)
    _works(capsys, run, "--interpolate", "a red circle", "a blue star with dots", "--steps", "5", "--out",
           tmp_path / "i.png")  # fmt: skip
    ((shape, kwargs),) = grids
    assert shape == (10, 3, 64, 64) and kwargs["rows"] == 2 and kwargs["columns"] == 5
    assert kwargs["row_labels"] == [f"text A → B, noise {i} fixed (β: the weight of A)" for i in (1, 2)]
    assert kwargs["column_labels"] == ["A: a red circle", "β=0.75", "β=0.50", "β=0.25", "B: a blue star"]


def test_a_broken_run_folder_is_a_one_line_error(tmp_path, capsys):
    assert "does not exist" in _fails(capsys, tmp_path / "missing", "a red circle", "--out", tmp_path / "s.png")
    broken = _write_run(tmp_path / "broken", "gan-int-cls", style_encoder=False)
    (broken / "generator.safetensors").write_bytes(b"garbage")
    message = _fails(capsys, broken, "a red circle", "--out", tmp_path / "s.png")
    assert "generator.safetensors" in message
    message = _fails(capsys, broken, "a red circle", "--style-from", broken / "config.yaml")
    assert "is not an image Pillow can read" in message
    (broken / "config.yaml").write_text("model: [unclosed\n")
    assert "config.yaml" in _fails(capsys, broken, "a red circle", "--out", tmp_path / "s.png")


def test_modes_a_model_lacks_are_errors(tmp_path, capsys, style_image):
    stackgan = _write_run(tmp_path / "stackgan", "stackgan")
    out = tmp_path / "s.png"
    message = _fails(capsys, stackgan, "--interpolate", "a red circle", "a blue star", "--out", out)
    assert message.startswith("--interpolate needs a gan-int-cls-family run") and "--model stackgan" in message
    message = _fails(capsys, stackgan, "a red circle", "--style-from", style_image, "--out", out)
    assert message.startswith("--style-from needs a run with a style encoder") and "--model stackgan" in message
    message = _fails(capsys, stackgan, "a red circle", "--attention", tmp_path / "a.png", "--out", out)
    assert message.startswith("--attention needs an attngan run") and "--model stackgan" in message
    no_style = _write_run(tmp_path / "no-style", "gan-int-cls", style_encoder=False)
    assert "has no style encoder" in _fails(capsys, no_style, "a red circle", "--style-from", style_image)
    _works(capsys, stackgan, "a red circle", "-n", "1", "--out", out)
    assert Image.open(out).format == "PNG"


def _blank():
    return Image.new("RGB", (8, 8))
