"""Pictures to look at rather than numbers to read: captioned sample grids, labelled grids (interpolations, style
transfer), accuracy bar charts and AttnGAN's word attention maps. Pillow only; images are float tensors in [-1, 1]
as the models produce them.

    caption_grid(fake, captions, columns=8, path="samples.png")
    image_grid(fake, rows=4, columns=9, row_labels=pairs, column_labels=[f"{t:.2f}" for t in steps], path="interp.png")
    accuracy_figure(result.as_dict(), title="caption accuracy", reference=ceiling.as_dict(), path="accuracy.png")
    attention_grid(images, attention, ["a red bird", "a small blue bird"], path="attention.png")  # AttnGAN's maps

Every `path=` write is atomic (temp file + os.replace), so a reader never sees half a PNG.
"""

import functools
import unicodedata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from t2ifast._atomic import atomic_file

BACKGROUND = (255, 255, 255)
TEXT = (30, 30, 30)
MUTED = (110, 110, 110)
GRID = (225, 225, 225)
GAP = 6  # pixels between tiles
PAD = 4  # pixels between a tile and its text
MODEL_COLOUR = (52, 101, 164)
REFERENCE_COLOUR = (186, 189, 182)
CHANCE_COLOUR = (204, 0, 0)


def save_image(image, path):
    """Write a PIL image atomically, in the format its suffix names (PNG when it names none); returns the path."""
    path = Path(path)
    with atomic_file(path) as temporary:
        image.save(temporary, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path


def to_pil(images):
    """[N, 3, H, W] (or [3, H, W]) float in [-1, 1] -> list of RGB PIL images (values outside are clipped)."""
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W] (or [3, H, W]), got {tuple(images.shape)}")
    array = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    array = array.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a, "RGB") for a in array]


@functools.lru_cache(maxsize=8)
def font(size=11):
    """Pillow's built-in font (no font files needed): the scalable default at `size` pixels where this Pillow has
    FreeType (Pillow >= 10.1), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


# stand-ins for characters the built-in font has no glyph for (it covers Latin-1, not arrows or Greek)
REPLACEMENTS = {"→": "->", "←": "<-", "↔": "<->", "β": "beta", "α": "alpha", "φ": "phi", "×": "x", "·": ".",
                "—": "-", "–": "-", "…": "...", "≤": "<=", "≥": ">=", "≈": "~", "‘": "'", "’": "'", "“": '"',
                "”": '"'}  # fmt: skip
_MISSING = "\U000f0000"  # a private-use character: no font has it, so it renders as the missing-glyph box


@functools.lru_cache(maxsize=1024)
def _glyph(text_font, character):
    """The rendering of one character (None when the font cannot draw it at all)."""
    size = line_height(text_font)
    image = Image.new("L", (4 * size, 2 * size))
    try:
        ImageDraw.Draw(image).text((0, 0), character, fill=255, font=text_font)
    except (UnicodeError, ValueError):
        return None
    return image.tobytes()


def printable(text, text_font):
    """`text` with the characters the font has no glyph for replaced: REPLACEMENTS, else the letter without its
    accents (é -> e), else "?"."""
    out = []
    for character in str(text):
        if character.isascii() or (
            (glyph := _glyph(text_font, character)) is not None and glyph != _glyph(text_font, _MISSING)
        ):
            out.append(character)
        elif character in REPLACEMENTS:
            out.append(REPLACEMENTS[character])
        else:
            plain = unicodedata.normalize("NFKD", character).encode("ascii", "ignore").decode()
            out.append(plain or "?")
    return "".join(out)


def line_height(text_font):
    try:
        ascent, descent = text_font.getmetrics()
        return ascent + descent + 1
    except AttributeError:  # the bitmap font
        box = text_font.getbbox("Ag")
        return box[3] - box[1] + 3


def text_width(text, text_font):
    box = text_font.getbbox(text)
    return box[2] - box[0]


def wrap(text, text_font, width):
    """Lines of `text` no wider than `width` pixels: greedy word wrap, over-long words broken by characters."""
    lines = []
    for paragraph in printable(text, text_font).splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if text_width(candidate, text_font) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while text_width(word, text_font) > width and len(word) > 1:  # a word wider than the line
                cut = len(word) - 1
                while cut > 1 and text_width(word[:cut], text_font) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _draw_lines(draw, lines, text_font, x, y, width, colour=TEXT, align="center"):
    height = line_height(text_font)
    for i, line in enumerate(lines):
        offset = (width - text_width(line, text_font)) // 2 if align == "center" else 0
        draw.text((x + offset, y + i * height), line, fill=colour, font=text_font)


def _tiles(images, scale):
    tiles = to_pil(images)
    if scale != 1:
        tiles = [tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST) for tile in tiles]
    return tiles


def caption_grid(images, captions, *, columns=8, scale=2, path=None, font_size=11, min_cell_width=128):
    """A grid of images, each with its caption word-wrapped in small text under it. Returns the PIL image.

    images: [N, 3, H, W] in [-1, 1]; captions: N strings. Each cell is the image scaled `scale`× (nearest
    neighbour: pixels stay crisp) and at least `min_cell_width` wide; the caption band under every cell is as tall
    as the longest wrapped caption needs, so nothing overlaps or is cut."""
    tiles = _tiles(images, scale)
    captions = [str(c) for c in captions]
    if len(captions) != len(tiles):
        raise ValueError(f"{len(tiles)} images but {len(captions)} captions")
    if columns < 1:
        raise ValueError(f"columns must be positive, got {columns}")
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    text_font = font(font_size)
    tile_w, tile_h = tiles[0].size
    cell_w = max(tile_w, min_cell_width)
    wrapped = [wrap(caption, text_font, cell_w) for caption in captions]
    # each row of cells is as tall as its longest caption needs
    bands = [max(len(lines) for lines in wrapped[r * columns : (r + 1) * columns]) for r in range(rows)]
    heights = [tile_h + PAD + lines * line_height(text_font) + PAD for lines in bands]
    tops = [GAP + sum(h + GAP for h in heights[:r]) for r in range(rows)]
    canvas = Image.new("RGB", (GAP + columns * (cell_w + GAP), GAP + sum(h + GAP for h in heights)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, (tile, lines) in enumerate(zip(tiles, wrapped, strict=True)):
        x, y = GAP + (i % columns) * (cell_w + GAP), tops[i // columns]
        canvas.paste(tile, (x + (cell_w - tile_w) // 2, y))
        _draw_lines(draw, lines, text_font, x, y + tile_h + PAD, cell_w)
    if path is not None:
        save_image(canvas, path)
    return canvas


def image_grid(
    images,
    *,
    rows,
    columns,
    row_labels=None,
    column_labels=None,
    scale=2,
    path=None,
    font_size=11,
    row_label_width=180,
):
    """A rows × columns grid of images (row-major, [rows·columns, 3, H, W] or [rows, columns, 3, H, W] in
    [-1, 1]), with optional labels left of each row and above each column, e.g. interpolations (a row per caption
    pair or noise vector, a column per step) or style transfer (a row per content, a column per style)."""
    if isinstance(images, torch.Tensor) and images.ndim == 5:
        images = images.reshape(-1, *images.shape[2:])
    tiles = _tiles(images, scale)
    if len(tiles) != rows * columns:
        raise ValueError(f"{len(tiles)} images do not fill {rows} rows × {columns} columns")
    for name, labels, count in (("row_labels", row_labels, rows), ("column_labels", column_labels, columns)):
        if labels is not None and len(labels) != count:
            raise ValueError(f"{name} must have {count} entries, got {len(labels)}")
    text_font = font(font_size)
    height = line_height(text_font)
    tile_w, tile_h = tiles[0].size
    label_w = row_label_width if row_labels is not None else 0
    row_lines = [wrap(label, text_font, label_w - PAD) for label in row_labels] if row_labels is not None else None
    column_lines = [wrap(label, text_font, tile_w) for label in column_labels] if column_labels is not None else None
    header = max(len(lines) for lines in column_lines) * height + PAD if column_lines else 0
    row_h = [max(tile_h, len(row_lines[r]) * height if row_lines else 0) for r in range(rows)]
    width = GAP + label_w + columns * (tile_w + GAP)
    canvas = Image.new("RGB", (width, GAP + header + sum(h + GAP for h in row_h)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if column_lines:
        for c, lines in enumerate(column_lines):
            x = GAP + label_w + c * (tile_w + GAP)
            _draw_lines(draw, lines, text_font, x, GAP + header - PAD - len(lines) * height, tile_w)
    y = GAP + header
    for r in range(rows):
        if row_lines:
            lines = row_lines[r]
            _draw_lines(draw, lines, text_font, GAP, y + (row_h[r] - len(lines) * height) // 2, label_w, align="left")
        for c in range(columns):
            canvas.paste(tiles[r * columns + c], (GAP + label_w + c * (tile_w + GAP), y + (row_h[r] - tile_h) // 2))
        y += row_h[r] + GAP
    if path is not None:
        save_image(canvas, path)
    return canvas


def heat_colours(values):
    """A blue -> cyan -> yellow -> red colour map (jet-like) of values in [0, 1]: float array [..., 3] in [0, 1]."""
    values = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue peak at 3/4, 1/2, 1/4
    return np.clip(1.5 - np.abs(4.0 * values - centres), 0.0, 1.0)


def attention_grid(images, attention, captions_words, *, path=None, max_words=18, scale=1, alpha=0.6, font_size=11):
    """AttnGAN's word-by-word attention maps: per sample a row holding the image, then for each word the image
    overlaid with that word's attention map as a heat map, the word written under it. Returns the PIL image.

    images: [N, 3, H, W] in [-1, 1]; attention: [N, T, h, w] (each region's weights over the words, e.g. the
    generator's last-stage attention), upsampled bilinearly to the image size; captions_words: N captions, each a
    string (split on whitespace) or a sequence of words, word t being attention[:, t]. At most
    min(T, max_words) words are shown per row. The maps of a row share one normalisation (the row's smallest
    weight -> blue, its largest -> red), so they compare across words, as AttnGAN's pictures do. Images are
    scaled `scale`× (nearest neighbour); `alpha` is the heat map's opacity over the image."""
    tiles = _tiles(images, scale)
    attention = torch.as_tensor(attention).detach().float().cpu()
    if attention.ndim != 4 or attention.shape[0] != len(tiles):
        raise ValueError(f"attention must be [N={len(tiles)}, T, h, w], got {tuple(attention.shape)}")
    if len(captions_words) != len(tiles):
        raise ValueError(f"{len(tiles)} images but {len(captions_words)} captions")
    if max_words < 1:
        raise ValueError(f"max_words must be positive, got {max_words}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    limit = min(attention.shape[1], max_words)
    words = [(c.split() if isinstance(c, str) else [str(w) for w in c])[:limit] for c in captions_words]
    columns = 1 + max(len(w) for w in words)
    tile_w, tile_h = tiles[0].size
    maps = F.interpolate(attention[:, :limit], size=(tile_h, tile_w), mode="bilinear", align_corners=False).numpy()
    text_font = font(font_size)
    labels = [[wrap(word, text_font, tile_w) for word in row] for row in words]
    band = max([1] + [len(lines) for row in labels for lines in row])
    row_h = tile_h + PAD + band * line_height(text_font) + PAD
    canvas = Image.new("RGB", (GAP + columns * (tile_w + GAP), GAP + len(tiles) * (row_h + GAP)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for n, (tile, row_words) in enumerate(zip(tiles, words, strict=True)):
        y = GAP + n * (row_h + GAP)
        canvas.paste(tile, (GAP, y))
        if not row_words:
            continue
        row_maps = maps[n, : len(row_words)]
        low, high = float(row_maps.min()), float(row_maps.max())
        row_maps = (row_maps - low) / (high - low) if high > low else np.zeros_like(row_maps)
        base = np.asarray(tile, dtype=np.float32) / 255.0
        for t, lines in enumerate(labels[n]):
            blended = (1 - alpha) * base + alpha * heat_colours(row_maps[t])
            x = GAP + (t + 1) * (tile_w + GAP)
            canvas.paste(Image.fromarray((blended * 255).round().astype(np.uint8), "RGB"), (x, y))
            _draw_lines(draw, lines, text_font, x, y + tile_h + PAD, tile_w)
    if path is not None:
        save_image(canvas, path)
    return canvas


def _fractions(values):
    """{label: fraction} from a dict (or an object with as_dict()): numeric entries in [0, 1] only (no counts)."""
    if hasattr(values, "as_dict"):
        values = values.as_dict()
    fractions = {}
    for name, value in values.items():
        if name == "count" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not 0 <= value <= 1:
            raise ValueError(f"{name}: {value} is not a fraction in [0, 1]")
        fractions[str(name).replace("_", " ")] = float(value)
    if not fractions:
        raise ValueError("no accuracies to draw")
    return fractions


def accuracy_figure(
    accuracy,
    *,
    title,
    reference=None,
    labels=("model", "reference"),
    chance=None,
    path=None,
    width=720,
    font_size=12,
):
    """A horizontal bar chart of accuracies (fractions in [0, 1]), one row per entry in the given order, e.g.
    each attribute plus "overall" and "all correct"; percentages printed at the bar ends. `reference` adds a
    second, grey bar per row (the real-image ceiling, another model) and a legend naming both (`labels`);
    `chance` ({name: fraction}) marks what guessing scores with a red tick. Returns the PIL image."""
    values = _fractions(accuracy)
    reference = _fractions(reference) if reference is not None else None
    chance = {str(k).replace("_", " "): float(v) for k, v in (chance or {}).items()}
    text_font, title_font = font(font_size), font(font_size + 4)
    height = line_height(text_font)
    label_w = max(text_width(printable(name, text_font), text_font) for name in values) + 3 * PAD
    value_w = text_width("100.0%", text_font) + 2 * PAD
    left, right = GAP + label_w, width - GAP - value_w
    if right - left < 100:
        raise ValueError(f"width {width} leaves no room for the bars")
    bar_h = height + 2
    row_h = (2 * bar_h if reference else bar_h) + 2 * PAD + 4

    title_lines = wrap(title, title_font, width - 2 * GAP)
    top = GAP + len(title_lines) * line_height(title_font) + PAD
    legend = [(printable(labels[0], text_font), MODEL_COLOUR)]
    if reference:
        legend.append((printable(labels[1], text_font), REFERENCE_COLOUR))
    if chance:
        legend.append(("chance", CHANCE_COLOUR))
    legend_h = height + PAD if len(legend) > 1 else 0
    plot_top = top + legend_h + PAD
    plot_bottom = plot_top + len(values) * row_h
    canvas = Image.new("RGB", (width, plot_bottom + height + 2 * PAD + GAP), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    _draw_lines(draw, title_lines, title_font, GAP, GAP, width - 2 * GAP)

    x = left
    for name, colour in legend if len(legend) > 1 else []:
        if colour == CHANCE_COLOUR:
            draw.line((x + 5, top + 1, x + 5, top + height - 1), fill=colour, width=2)
        else:
            draw.rectangle((x, top + 2, x + 10, top + height - 2), fill=colour)
        draw.text((x + 14, top), name, fill=TEXT, font=text_font)
        x += 14 + text_width(name, text_font) + 4 * PAD

    def position(fraction):
        return left + round(fraction * (right - left))

    for tick in (0, 0.25, 0.5, 0.75, 1.0):  # grid and axis labels
        tx = position(tick)
        draw.line((tx, plot_top, tx, plot_bottom), fill=GRID, width=1)
        label = f"{tick:.0%}"
        draw.text((tx - text_width(label, text_font) // 2, plot_bottom + PAD), label, fill=MUTED, font=text_font)

    for row, (name, value) in enumerate(values.items()):
        y = plot_top + row * row_h + PAD + 2
        bars = [(value, MODEL_COLOUR)]
        if reference:
            bars.append((reference.get(name), REFERENCE_COLOUR))
        block_h = len(bars) * bar_h
        shown = printable(name, text_font)
        draw.text((GAP + label_w - 2 * PAD - text_width(shown, text_font), y + (block_h - height) // 2), shown,
                  fill=TEXT, font=text_font)  # fmt: skip
        for i, (fraction, colour) in enumerate(bars):
            by = y + i * bar_h
            if fraction is None:
                draw.text((left + PAD, by), "n/a", fill=MUTED, font=text_font)
                continue
            if fraction > 0:
                draw.rectangle((left, by + 1, max(left, position(fraction) - 1), by + bar_h - 2), fill=colour)
            draw.text((position(fraction) + PAD, by), f"{fraction:.1%}", fill=TEXT, font=text_font)
        if name in chance:
            cx = position(chance[name])
            draw.line((cx, y - 2, cx, y + block_h + 1), fill=CHANCE_COLOUR, width=2)
    if path is not None:
        save_image(canvas, path)
    return canvas
