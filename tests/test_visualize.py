"""Captioned grids, labelled grids and accuracy charts: sizes, text actually drawn where it belongs, atomic PNGs."""

import numpy as np
import pytest
import torch
from PIL import Image

from t2ifast.visualize import (
    BACKGROUND,
    GAP,
    MODEL_COLOUR,
    REFERENCE_COLOUR,
    accuracy_figure,
    caption_grid,
    font,
    image_grid,
    printable,
    save_image,
    to_pil,
)


def solid(colours, side=32):
    """[N, 3, side, side] images of solid colours given as 0-255 RGB."""
    values = torch.tensor(colours, dtype=torch.float32) / 127.5 - 1
    return values[:, :, None, None].expand(-1, -1, side, side).clone()


COLOURS = [(200, 30, 30), (30, 170, 50), (40, 70, 220), (240, 220, 30), (140, 40, 180), (30, 210, 220)]


def pixels(image):
    return np.asarray(image.convert("RGB"))


def is_background(region):
    return bool((region == np.array(BACKGROUND, dtype=np.uint8)).all())


def test_to_pil_clips_and_checks_shapes():
    images = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    (image,) = to_pil(images)
    assert image.size == (5, 1) and pixels(image)[0, :, 0].tolist() == [0, 0, 128, 255, 255]
    assert len(to_pil(torch.zeros(3, 4, 4))) == 1
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        to_pil(torch.zeros(2, 1, 4, 4))


def test_caption_grid_layout_and_captions_under_their_images(tmp_path):
    captions = ["a small red circle on a white background", "", "a big blue star", "x", "green", "a cyan square"]
    path = tmp_path / "grid.png"
    grid = caption_grid(solid(COLOURS), captions, columns=4, scale=2, path=path)
    cell = 128  # 32 px × 2 is narrower than the minimum cell width
    assert grid.width == GAP + 4 * (cell + GAP)
    assert grid.height > 2 * 64 + 3 * GAP
    array = pixels(grid)
    # the images are where they should be: tile (0, 0) centred in its cell, scaled to 64 px
    left = GAP + (cell - 64) // 2
    assert (array[GAP : GAP + 64, left : left + 64] == np.array(COLOURS[0], dtype=np.uint8)).all()
    band = slice(GAP + 64 + 2, GAP + 64 + 30)  # the caption band under the first row
    assert not is_background(array[band, GAP : GAP + cell])  # caption 0 drawn under image 0
    second = GAP + cell + GAP
    assert is_background(array[band, second : second + cell])  # caption 1 is empty: nothing drawn
    # nothing is drawn in the gaps between cells (no caption runs into its neighbour)
    for column in range(1, 4):
        x = GAP + column * (cell + GAP) - GAP
        assert is_background(array[:, x : x + GAP])
    assert Image.open(path).size == grid.size


def test_caption_grid_wraps_long_captions_into_taller_rows():
    short = caption_grid(solid(COLOURS[:2]), ["red", "green"], columns=2)
    long_caption = "a very long caption " * 10 + "withonewordthatismuchwiderthananytileshouldeverbe"
    long = caption_grid(solid(COLOURS[:2]), ["red", long_caption], columns=2)
    assert long.width == short.width
    assert long.height > short.height + 5 * 12  # several wrapped lines
    array = pixels(long)
    cell = 128
    for x in (0, GAP + cell, long.width - GAP):  # margins and the gap between the two cells stay empty
        assert is_background(array[:, x : x + GAP])
    with pytest.raises(ValueError, match="captions"):
        caption_grid(solid(COLOURS[:2]), ["only one"])


def test_image_grid_places_tiles_and_labels(tmp_path):
    images = solid(COLOURS, side=16)
    plain = image_grid(images, rows=2, columns=3, scale=2)
    assert plain.size == (GAP + 3 * (32 + GAP), GAP + 2 * (32 + GAP))
    array = pixels(plain)
    for index, colour in enumerate(COLOURS):
        r, c = divmod(index, 3)
        y, x = GAP + r * (32 + GAP) + 16, GAP + c * (32 + GAP) + 16
        assert tuple(array[y, x]) == colour

    labelled = image_grid(
        images.reshape(2, 3, 3, 16, 16),  # [rows, columns, 3, H, W] works too
        rows=2,
        columns=3,
        row_labels=["first caption → second caption", "noise"],
        column_labels=["β=0", "β=0.5", "β=1"],
        scale=2,
        row_label_width=120,
        path=tmp_path / "labelled.png",
    )
    assert labelled.width == plain.width + 120
    assert labelled.height > plain.height
    array = pixels(labelled)
    header = labelled.height - plain.height
    assert not is_background(array[GAP : GAP + header - 2, GAP + 120 : GAP + 120 + 32])  # a column label
    assert not is_background(array[GAP + header : GAP + header + 32, GAP : GAP + 115])  # a row label
    with pytest.raises(ValueError, match="rows"):
        image_grid(images, rows=4, columns=2)
    with pytest.raises(ValueError, match="row_labels"):
        image_grid(images, rows=2, columns=3, row_labels=["one"])


def test_text_the_font_cannot_draw_is_replaced():
    text_font = font(11)
    assert printable("a → b, β = 0.5 × 2", text_font) == "a -> b, beta = 0.5 x 2"
    assert printable("plain ascii", text_font) == "plain ascii"
    assert printable("café", text_font) in ("café", "cafe")  # drawn if the font has é, else without the accent
    assert printable("漢", text_font) == "?"


def bar_widths(image, colour):
    """Widths of the horizontal bars of one colour, top to bottom."""
    mask = (pixels(image) == np.array(colour, dtype=np.uint8)).all(axis=2)
    rows = np.flatnonzero(mask.any(axis=1))
    bands = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    return [int(mask[band].sum(axis=1).max()) for band in bands if len(band) > 3]


def test_accuracy_figure_draws_bars_in_proportion(tmp_path):
    accuracy = {"shape": 0.25, "colour": 1.0, "size": 0.5, "overall": 0.5833, "all_correct": 0.1, "count": 800}
    figure = accuracy_figure(accuracy, title="caption accuracy", path=tmp_path / "accuracy.png")
    assert figure.width == 720
    widths = bar_widths(figure, MODEL_COLOUR)
    assert len(widths) == 5  # "count" is not a fraction: not drawn
    full = widths[1]
    for width, value in zip(widths, [0.25, 1.0, 0.5, 0.5833, 0.1], strict=True):
        assert width == pytest.approx(value * full, abs=2)
    assert (tmp_path / "accuracy.png").is_file()


def test_accuracy_figure_with_reference_and_chance():
    accuracy = {"shape": 0.4, "colour": 0.9}
    reference = {"shape": 1.0, "colour": 0.98}
    single = accuracy_figure(accuracy, title="t")
    both = accuracy_figure(accuracy, title="t", reference=reference, labels=("model", "real images"),
                           chance={"shape": 1 / 6, "colour": 1 / 8})  # fmt: skip
    assert both.height > single.height
    model, real = bar_widths(both, MODEL_COLOUR), bar_widths(both, REFERENCE_COLOUR)
    # the legend's swatches are bars too: drop them (the first band of each colour)
    assert len(model) == len(real) == 3
    assert model[2] / real[2] == pytest.approx(0.9 / 0.98, abs=0.02)
    assert real[1] > model[1]
    with pytest.raises(ValueError, match="fraction"):
        accuracy_figure({"shape": 97.0}, title="percent instead of a fraction")
    with pytest.raises(ValueError, match="no accuracies"):
        accuracy_figure({"count": 3}, title="nothing")


def test_save_image_is_atomic_and_readable(tmp_path):
    image = Image.new("RGB", (7, 5), (1, 2, 3))
    path = save_image(image, tmp_path / "deep" / "folder" / "picture.png")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["picture.png"]
    with Image.open(path) as reread:
        assert reread.format == "PNG" and reread.size == (7, 5) and reread.getpixel((3, 3)) == (1, 2, 3)
    assert path.stat().st_mode & 0o044  # readable by others, unlike mkstemp's private default
    save_image(Image.new("RGB", (2, 2)), path)  # replaces
    with Image.open(path) as reread:
        assert reread.size == (2, 2)
