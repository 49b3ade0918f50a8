"""python -m t2ifast.sample — images from a finished run: captions → images, interpolation grids, style transfer.

    python -m t2ifast.sample runs/t2ifast "a small red circle on a black background" "a big blue star" -n 8
    python -m t2ifast.sample runs/t2ifast --interpolate "a red circle on white" "a blue square on black"
    python -m t2ifast.sample runs/t2ifast "a green star" "a pink box" --style-from photo1.jpg photo2.jpg
    python -m t2ifast.sample runs/attngan "a red circle on white" -n 4 --attention attention.png

Captions → images works for every model (GAN-INT-CLS family, StackGAN at 256×256, AttnGAN at its last stage's
size); `--attention` (AttnGAN) also draws each image's word-by-word attention maps. Text interpolation and style
transfer need a GAN-INT-CLS-family run (style transfer one with a style encoder; each style image is centre-cropped
to a square, then resized to 64×64). Every picture is labelled: captions under the images (the words the model
reads, when it ignores some: words outside the run's vocabulary or past data.max_words, each warned about on
stderr), β and the two captions above an interpolation grid. `--out` names it (.png, .jpg, .webp, .bmp, .tif;
missing folders are made), `--seed` fixes the noise. A bad option, file or caption stops the tool with a one-line
message before anything is drawn; an option without effect in the chosen mode is warned about.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from t2ifast._validation import check_device
from t2ifast.data import tokenize
from t2ifast.training.artifacts import load_run
from t2ifast.training.gan_int_cls import VARIANTS
from t2ifast.visualize import attention_grid, caption_grid, image_grid, save_image


@torch.no_grad()
def text_interpolation(generator, start, end, z, steps=8):
    """G(z, β·start + (1 − β)·end) for β from 1 to 0: [steps, 3, 64, 64] (GAN-INT's smooth text manifold)."""
    betas = torch.linspace(1.0, 0.0, steps, device=start.device)[:, None]
    return generator(z.expand(steps, -1), betas * start + (1 - betas) * end)


@torch.no_grad()
def noise_interpolation(generator, embedding, z_start, z_end, steps=8):
    """G(β·z_start + (1 − β)·z_end, φ(t)) for one caption: the style changes, the content should not."""
    betas = torch.linspace(1.0, 0.0, steps, device=z_start.device)[:, None]
    return generator(betas * z_start + (1 - betas) * z_end, embedding.expand(steps, -1))


@torch.no_grad()
def interpolation_grid(generator, embed, batch, *, pairs=3, steps=8, path=None, seed=0):
    """Rows of text interpolations between consecutive captions of `batch` (fixed noise), then rows of noise
    interpolations for single captions."""
    generator.eval()
    embeddings = embed(batch, "right")
    pairs = min(pairs, len(embeddings) // 2)
    noise = torch.Generator().manual_seed(seed)
    z = torch.randn(2 * pairs, generator.z_dim, generator=noise).to(embeddings.device)
    rows, labels = [], []
    for i in range(pairs):
        rows.append(text_interpolation(generator, embeddings[2 * i], embeddings[2 * i + 1], z[i : i + 1], steps))
        labels.append(f"text {2 * i} → {2 * i + 1}")
    for i in range(pairs):
        rows.append(noise_interpolation(generator, embeddings[i : i + 1], z[i : i + 1], z[pairs + i : pairs + i + 1]))
        labels.append(f"noise, text {i}")
    images = torch.cat(rows).float().cpu()
    return image_grid(images, rows=len(rows), columns=steps, row_labels=labels, path=path)


@torch.no_grad()
def style_transfer(generator, style_encoder, images, embeddings):
    """[S, C] grid of G(S(image_s), φ(caption_c)): each row keeps one image's style, each column one caption."""
    styles = style_encoder(images)
    s, c = len(styles), len(embeddings)
    return generator(styles.repeat_interleave(c, 0), embeddings.repeat(s, 1))


@torch.no_grad()
def style_transfer_grid(generator, style_encoder, embed, batch, *, sources=None, count=6, path=None, seed=0):
    """Rows: a source image (first column), then its style carried to `count` captions of `batch`. Sources are
    generated from the batch's own captions with fixed noise when no real images are given."""
    generator.eval()
    style_encoder.eval()
    embeddings = embed(batch, "right")[:count]
    if sources is None:
        z = torch.randn(len(embeddings), generator.z_dim, generator=torch.Generator().manual_seed(seed))
        sources = generator(z.to(embeddings.device), embeddings)
    sources = sources[:count].float()
    transferred = style_transfer(generator, style_encoder, sources, embeddings).float()
    rows = [torch.cat([sources[i : i + 1], transferred[i * len(embeddings) : (i + 1) * len(embeddings)]]) for i in
            range(len(sources))]  # fmt: skip
    return image_grid(
        torch.cat(rows).cpu(),
        rows=len(sources),
        columns=len(embeddings) + 1,
        column_labels=["source", *(f"text {i}" for i in range(len(embeddings)))],
        path=path,
    )


STYLE_SIZE = 64  # the style encoder's input: every --style-from image is centre-cropped, then resized to this
DEFAULTS = {"per_caption": 8, "steps": 8}  # options whose default is filled after parsing (to know if one was given)
LIMITS = {"per_caption": ("-n/--per-caption", 1, 256), "steps": ("--steps", 2, 64)}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # what --out and --attention may end in


def _warn(message):
    print(f"t2ifast.sample: warning: {message}", file=sys.stderr)


def _quote(caption, limit=60):
    """A caption as it appears in a message: quoted, shortened with "…" when long."""
    return repr(caption if len(caption) <= limit else caption[: limit - 1].rstrip() + "…")


def _image_suffixes():
    """IMAGE_SUFFIXES that this Pillow can write."""
    formats = Image.registered_extensions()
    return [suffix for suffix in IMAGE_SUFFIXES if formats.get(suffix) in Image.SAVE]


def _check_output(option, value):
    """The image file `option` names as a Path: an image suffix Pillow writes, not a folder, and a place it can be
    written (missing parent folders are created when it is saved)."""
    path = Path(value).expanduser()
    suffixes = _image_suffixes()
    if path.is_dir():
        raise ValueError(f"{option}: {value} is a folder; name an image file, e.g. {path / 'samples.png'}")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{option} must name an image file ending in {', '.join(suffixes)}; got {value!r}")
    for parent in path.parents:  # the nearest existing one must be a folder we can write in
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option}: cannot write {value}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{option}: cannot write {value}: folder {parent} is not writable")
            break
    return path


def _centre_square(image):
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _read_image(path, option="--style-from"):
    """An image file as a [3, 64, 64] tensor in [-1, 1]: centre-cropped to a square, then resized."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option}: {path} is a folder, not an image")
    if not path.is_file():
        raise FileNotFoundError(f"{option}: image {path} does not exist")
    try:
        with Image.open(path) as opened:
            image = _centre_square(opened.convert("RGB"))
    except UnidentifiedImageError:
        raise ValueError(f"{option}: {path} is not an image Pillow can read") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"{option}: {path} is not an image Pillow can read ({error})") from None
    image = image.resize((STYLE_SIZE, STYLE_SIZE), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 127.5 - 1


def _check_words(captions, names):
    """Before the run is loaded: every caption has a word."""
    for caption, name in zip(captions, names, strict=True):
        if not caption.strip():
            raise ValueError(f"{name} is empty")
        if not tokenize(caption):
            raise ValueError(f"{name} ({_quote(caption)}) has no words (only punctuation or non-ASCII characters)")


def _read_captions(run, captions, names):
    """The label of each caption in the pictures: the caption itself, or the words the model reads when it ignores
    some (words outside the run's vocabulary, words past data.max_words); each ignored part is warned about."""
    limit = run.config.data.max_words
    labels = []
    for caption, name in zip(captions, names, strict=True):
        known, unknown = run.vocabulary.encode(tokenize(caption))
        unknown = ", ".join(dict.fromkeys(unknown))
        if not known:
            raise ValueError(f"{name} ({_quote(caption)}) has no word of the model's vocabulary (unknown: {unknown})")
        if unknown:
            _warn(f"{_quote(caption)}: words not in the run's vocabulary, ignored: {unknown}")
        if len(known) > limit:
            _warn(
                f"{_quote(caption)}: the model reads at most {limit} words (data.max_words); the first {limit} of its "
                f"{len(known)} known words are used, the picture is labelled with them"
            )
        if unknown or len(known) > limit:
            caption = run.vocabulary.decode(known[:limit]) + (" …" if len(known) > limit else "")
        labels.append(caption)
    return labels


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as every other error of the tool
        sys.exit(f"t2ifast.sample: {message} (see python -m t2ifast.sample --help)")


def _check_arguments(args):
    """Option values, combinations and options without effect (warned about), before anything is loaded; fills
    the defaults of DEFAULTS."""
    for key, (option, low, high) in LIMITS.items():
        value = getattr(args, key)
        if value is not None and value < low:
            raise ValueError(f"{option} must be at least {low}, got {value}")
        if value is not None and value > high:
            raise ValueError(f"{option} must be at most {high}, got {value}")
    if args.interpolate and args.captions:
        raise ValueError(
            "captions and --interpolate do not go together: --interpolate draws the grid between its own two "
            "captions (python -m t2ifast.sample RUN --interpolate 'caption A' 'caption B')"
        )
    if args.interpolate and args.style_from:
        raise ValueError("--interpolate and --style-from do not go together: choose one")
    if args.attention and (args.interpolate or args.style_from):
        raise ValueError("--attention goes with captions → images, not with --interpolate or --style-from")
    if args.style_from and not args.captions:
        raise ValueError(
            "--style-from needs captions, given before it (every value after --style-from is read as an image): "
            "python -m t2ifast.sample RUN 'caption' ... --style-from IMAGE ..."
        )
    if not args.captions and not args.interpolate:
        raise ValueError("give captions to draw, --interpolate A B, or --style-from IMAGES with captions")
    if args.steps is not None and not args.interpolate:
        _warn("--steps only applies to --interpolate; ignored")
    if args.per_caption is not None and (args.interpolate or args.style_from):
        mode = "--interpolate" if args.interpolate else "--style-from (one image per style image and caption)"
        _warn(f"-n/--per-caption has no effect with {mode}; ignored")
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    names = [f"--interpolate caption {ab}" for ab in "AB"] if args.interpolate else None
    names = names or [f"caption {i}" for i in range(1, len(args.captions) + 1)]
    _check_words(args.interpolate or args.captions, names)
    args.names = names


def main(argv=None):
    parser = _Parser(prog="python -m t2ifast.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished run folder (python -m t2ifast.train --out ...)")
    parser.add_argument("captions", nargs="*", help="captions to draw")
    parser.add_argument(
        "-n", "--per-caption", type=int, help=f"images per caption (default {DEFAULTS['per_caption']}, at most 256)"
    )
    parser.add_argument(
        "--interpolate", nargs=2, metavar=("CAPTION_A", "CAPTION_B"), help="text interpolation grid (no captions)"
    )
    parser.add_argument(
        "--style-from",
        nargs="+",
        metavar="IMAGE",
        help=f"style transfer from these images (each centre-cropped to a square, then resized to "
        f"{STYLE_SIZE}×{STYLE_SIZE})",
    )
    parser.add_argument(
        "--steps", type=int, help=f"interpolation steps (default {DEFAULTS['steps']}, 2 to 64; --interpolate only)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when there is one, else cpu)")
    parser.add_argument(
        "--out", default="samples.png", help=f"the picture to write ({', '.join(IMAGE_SUFFIXES)}; folders are made)"
    )
    parser.add_argument("--attention", metavar="PNG", help="AttnGAN runs: also write the word attention maps here")
    args = parser.parse_args(argv)
    try:
        _check_arguments(args)
        device = check_device("--device", args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        outputs = {"--out": _check_output("--out", args.out)}
        if args.attention:
            outputs["--attention"] = _check_output("--attention", args.attention)
            if outputs["--attention"].resolve() == outputs["--out"].resolve():
                raise ValueError(f"--attention and --out both name {args.out}; give two files")
        sources = torch.stack([_read_image(p) for p in args.style_from]) if args.style_from else None
        run = load_run(args.run, device)
        pictures = _pictures(run, args, outputs, sources)
    except (OSError, ValueError) as error:
        sys.exit(f"t2ifast.sample: {error}")
    for path, picture in pictures.items():
        try:
            save_image(picture, path)
        except OSError as error:
            sys.exit(f"t2ifast.sample: cannot write {path}: {error}")
        print(f"written {path}")


def _require(run, args, option, models, needs):
    if run.config.model not in models:
        raise ValueError(f"{option} needs {needs}; {args.run} was trained with --model {run.config.model}")


def _interpolation_labels(labels, steps):
    """(row labels, column labels) of the interpolation grid: a row per noise vector, a column per β (the weight
    of caption A), the first and last columns naming the captions."""
    betas = torch.linspace(1.0, 0.0, steps).tolist()
    columns = [f"A: {labels[0]}", *(f"β={beta:.2f}" for beta in betas[1:-1]), f"B: {labels[1]}"]
    rows = [f"text A → B, noise {i} fixed (β: the weight of A)" for i in (1, 2)]
    return rows, columns


def _pictures(run, args, outputs, sources=None):
    """{path: picture} of what the arguments ask for (`_check_arguments` has run; `outputs`: the checked paths of
    --out and --attention; `sources`: the --style-from images)."""
    torch.manual_seed(args.seed)
    generator, device, out = run.generator, run.device, outputs["--out"]
    if args.interpolate:
        _require(run, args, "--interpolate", VARIANTS, f"a gan-int-cls-family run ({', '.join(VARIANTS)})")
        labels = _read_captions(run, list(args.interpolate), args.names)
        start, end = run.embed_captions(list(args.interpolate))
        z = torch.randn(2, generator.z_dim, device=device)
        rows = [text_interpolation(generator, start, end, z[i : i + 1], args.steps) for i in range(2)]
        row_labels, column_labels = _interpolation_labels(labels, args.steps)
        grid = image_grid(
            torch.cat(rows).float().cpu(),
            rows=2,
            columns=args.steps,
            row_labels=row_labels,
            column_labels=column_labels,
        )
        return {out: grid}
    if args.style_from:
        _require(run, args, "--style-from", VARIANTS, "a run with a style encoder (gan-int-cls family)")
        if run.style_encoder is None:
            raise ValueError(f"{args.run} has no style encoder (train with gan.style_steps > 0)")
        labels = _read_captions(run, args.captions, args.names)
        embeddings = run.embed_captions(args.captions)
        sources = sources.to(device)
        transferred = style_transfer(generator, run.style_encoder, sources, embeddings).float().cpu()
        rows = [torch.cat([sources[i : i + 1].cpu(), transferred[i * len(embeddings) : (i + 1) * len(embeddings)]])
                for i in range(len(sources))]  # fmt: skip
        grid = image_grid(
            torch.cat(rows), rows=len(sources), columns=len(embeddings) + 1, column_labels=["source", *labels]
        )
        return {out: grid}
    if args.attention:
        _require(run, args, "--attention", ("attngan",), "an attngan run (word attention maps)")
        if run.config.attngan.stages == 1:
            raise ValueError(f"--attention needs attngan.stages >= 2 (later stages attend to words); {args.run} has 1")
    labels = _read_captions(run, args.captions, args.names)
    captions = [c for c in args.captions for _ in range(args.per_caption)]
    labels = [label for label in labels for _ in range(args.per_caption)]
    batch = run.encode_captions(captions)
    z = torch.randn(len(captions), run.z_dim, device=device)
    if not args.attention:
        return {out: caption_grid(run.generate(batch, z).float().cpu(), labels, columns=args.per_caption)}
    images, attention = run.generate(batch, z, return_attention=True)
    images = images.float().cpu()
    words = [run.vocabulary.decode(row) for row in batch.captions.tolist()]  # the words the maps are over
    return {
        out: caption_grid(images, labels, columns=args.per_caption),
        outputs["--attention"]: attention_grid(images, attention[-1], words),
    }


if __name__ == "__main__":
    main()
