"""python -m t2ifast.sample — images from a finished run: captions → images, interpolation grids, style transfer.

    python -m t2ifast.sample runs/t2ifast "a small red circle on a black background" "a big blue star" -n 8
    python -m t2ifast.sample runs/t2ifast --interpolate "a red circle on white" "a blue square on black"
    python -m t2ifast.sample runs/t2ifast "a green star" "a pink box" --style-from photo1.jpg photo2.jpg
    python -m t2ifast.sample runs/attngan "a red circle on white" -n 4 --attention attention.png

Captions → images works for every model (GAN-INT-CLS family, StackGAN at 256×256, AttnGAN at its last stage's
size); `--attention` (AttnGAN) also draws each image's word-by-word attention maps. Text interpolation and style
transfer need a GAN-INT-CLS-family run (style transfer one with a style encoder).
Every picture is a PNG (captions under the images); `--out` names it, `--seed` fixes the noise.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from t2ifast.training.artifacts import load_run
from t2ifast.training.gan_int_cls import VARIANTS
from t2ifast.visualize import attention_grid, caption_grid, image_grid


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


def _read_image(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    image = Image.open(path).convert("RGB").resize((64, 64), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 127.5 - 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m t2ifast.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished run folder (python -m t2ifast.train --out ...)")
    parser.add_argument("captions", nargs="*", help="captions to draw")
    parser.add_argument("-n", "--per-caption", type=int, default=8, help="images per caption")
    parser.add_argument("--interpolate", nargs=2, metavar=("CAPTION_A", "CAPTION_B"), help="text interpolation grid")
    parser.add_argument("--style-from", nargs="+", metavar="IMAGE", help="style transfer from these images")
    parser.add_argument("--steps", type=int, default=8, help="interpolation steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="samples.png", help="the PNG to write")
    parser.add_argument("--attention", metavar="PNG", help="AttnGAN runs: also write the word attention maps here")
    args = parser.parse_args(argv)
    if args.per_caption < 1 or args.steps < 2:
        parser.error("--per-caption must be at least 1 and --steps at least 2")
    if args.attention and (args.interpolate or args.style_from):
        parser.error("--attention goes with captions → images, not with --interpolate or --style-from")
    try:
        run = load_run(args.run, args.device)
        pictures = _pictures(run, args)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"t2ifast.sample: {error}")
    for path, picture in pictures.items():
        picture.save(path)
        print(f"written {path}")


def _require(run, args, option, models, needs):
    if run.config.model not in models:
        raise ValueError(f"{option} needs {needs}; {args.run} was trained with --model {run.config.model}")


def _pictures(run, args):
    """{path: picture} of what the arguments ask for."""
    torch.manual_seed(args.seed)
    generator, device = run.generator, args.device
    if args.interpolate:
        _require(run, args, "--interpolate", VARIANTS, f"a gan-int-cls-family run ({', '.join(VARIANTS)})")
        start, end = run.embed_captions(list(args.interpolate))
        z = torch.randn(2, generator.z_dim, device=device)
        rows = [text_interpolation(generator, start, end, z[i : i + 1], args.steps) for i in range(2)]
        label = f"{args.interpolate[0]} → {args.interpolate[1]}"
        grid = image_grid(torch.cat(rows).float().cpu(), rows=2, columns=args.steps, row_labels=[label, label])
        return {args.out: grid}
    if not args.captions:
        raise ValueError("give captions to draw, --interpolate A B, or --style-from IMAGES with captions")
    if args.style_from:
        _require(run, args, "--style-from", VARIANTS, "a run with a style encoder (gan-int-cls family)")
        if run.style_encoder is None:
            raise ValueError(f"{args.run} has no style encoder (train with gan.style_steps > 0)")
        embeddings = run.embed_captions(args.captions)
        sources = torch.stack([_read_image(p) for p in args.style_from]).to(device)
        transferred = style_transfer(generator, run.style_encoder, sources, embeddings).float().cpu()
        rows = [torch.cat([sources[i : i + 1].cpu(), transferred[i * len(embeddings) : (i + 1) * len(embeddings)]])
                for i in range(len(sources))]  # fmt: skip
        grid = image_grid(
            torch.cat(rows), rows=len(sources), columns=len(embeddings) + 1, column_labels=["source", *args.captions]
        )
        return {args.out: grid}
    if args.attention:
        _require(run, args, "--attention", ("attngan",), "an attngan run (word attention maps)")
        if run.config.attngan.stages == 1:
            raise ValueError(f"--attention needs attngan.stages >= 2 (later stages attend to words); {args.run} has 1")
    captions = [c for c in args.captions for _ in range(args.per_caption)]
    batch = run.encode_captions(captions)
    z = torch.randn(len(captions), run.z_dim, device=device)
    if not args.attention:
        return {args.out: caption_grid(run.generate(batch, z).float().cpu(), captions, columns=args.per_caption)}
    images, attention = run.generate(batch, z, return_attention=True)
    images = images.float().cpu()
    words = [run.vocabulary.decode(row) for row in batch.captions.tolist()]  # the words the maps are over
    return {
        args.out: caption_grid(images, captions, columns=args.per_caption),
        args.attention: attention_grid(images, attention[-1], words),
    }


if __name__ == "__main__":
    main()
