"""python -m t2ifast.evaluate — how well a finished run's images match their captions.

Works on every GAN run (GAN-INT-CLS family, StackGAN, AttnGAN), with images drawn at the run's final resolution
(`FinishedRun.generate`). On the synthetic set: the caption accuracy — an attribute classifier trained on the set's
real images (cached) predicts the shape, colour, size, position and background of images generated from held-out
captions; the same classifier on the real held-out images gives the ceiling. With --r-precision: AttnGAN's
R-precision with the run's DAMSM text and image encoders (t2ifast.evaluation.r_precision). With
--damsm-attributes (synthetic set): which attributes the run's DAMSM tells apart on the real held-out images, the
ceiling of what a generator conditioned on it can follow (t2ifast.evaluation.damsm_attributes). With an Inception
weights file: IS and FID (the real images at the generated size).

    python -m t2ifast.evaluate runs/t2ifast                      # caption accuracy (synthetic set runs)
    python -m t2ifast.evaluate runs/t2ifast --r-precision --r-images 30000 --r-splits 10 --seed 0
    python -m t2ifast.evaluate runs/t2ifast --damsm-attributes 300
    python -m t2ifast.evaluate runs/t2ifast --inception-weights weights-inception-2015-12-05-6726825d.pth

The metrics of this call are printed as JSON on stdout and merged into the run's evaluation.json (or --out): the
entries this call computed are replaced, the others (e.g. those the training job wrote) are kept; each entry holds
the settings it was computed with (max_samples, seed, ...).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from t2ifast._atomic import atomic_file
from t2ifast._validation import check_device
from t2ifast.data import generate_synthetic, load_attributes, make_loader, open_dataset
from t2ifast.evaluation import (
    attribute_discrimination,
    caption_accuracy,
    caption_accuracy_of_real_images,
    damsm_score,
    evaluate_r_precision,
    load_or_train_attribute_classifier,
)
from t2ifast.training.artifacts import VOCABULARY, load_damsm_encoders, load_run, load_vocabulary, run_folder_config
from t2ifast.training.config import image_sizes
from t2ifast.visualize import accuracy_figure


def synthetic_caption_accuracy(folder, held_out, generate, config, device, *, max_samples=1000, progress=True):
    """(accuracy of images generated from held-out captions, the real held-out images' accuracy as a dict)."""
    classifier, _ = load_or_train_attribute_classifier(
        folder, Path(config.train.cache_dir).expanduser() / "classifiers", device=device, progress=progress,
        steps=config.eval.classifier_steps,
    )  # fmt: skip
    attributes = load_attributes(folder)
    options = {"max_samples": max_samples, "seed": config.train.seed, "device": device, "progress": progress}
    result = caption_accuracy(generate, held_out, attributes, classifier, **options)
    ceiling = caption_accuracy_of_real_images(held_out, attributes, classifier, **options)
    return result, ceiling.as_dict()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m t2ifast.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a finished run folder")
    parser.add_argument(
        "--out", metavar="PATH",
        help="the JSON file the metrics are merged into (default: RUN/evaluation.json); the report is also printed",
    )  # fmt: skip
    parser.add_argument(
        "--max-samples", type=int, default=1000,
        help="held-out samples to generate from, for the caption accuracy and for IS and FID (1000)",
    )  # fmt: skip
    parser.add_argument("--inception-weights", help="Inception-v3 weights file for IS and FID (never downloaded)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--seed", type=int, default=0,
        help="seed of R-precision, DAMSM attributes, IS and FID (0); the caption accuracy uses the run's train.seed, "
        "as the training job did",
    )  # fmt: skip
    r_precision = parser.add_argument_group("R-precision (AttnGAN's protocol, with the run's DAMSM encoders)")
    r_precision.add_argument("--r-precision", action="store_true", help="compute R-precision on held-out captions")
    r_precision.add_argument("--r-images", type=int, default=30000, help="images generated (30000 in the paper)")
    r_precision.add_argument("--r-splits", type=int, default=10, help="splits for the mean and std (10)")
    r_precision.add_argument("--r-candidates", type=int, default=100, help="captions ranked per image (100)")
    r_precision.add_argument("--r-k", type=int, default=1, help="a hit when the true caption is in the top k (1)")
    parser.add_argument(
        "--damsm-attributes", type=int, nargs="?", const=300, default=None, metavar="IMAGES",
        help="synthetic set: which attributes the run's DAMSM tells apart on this many real held-out images (300)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.damsm_attributes is not None and args.damsm_attributes < 2:
        parser.error("--damsm-attributes must be at least 2")
    if args.max_samples < 2:
        parser.error("--max-samples must be at least 2")
    for name in ("r_images", "r_splits", "r_k"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.r_candidates < 2:
        parser.error("--r-candidates must be at least 2")
    if args.r_splits > args.r_images:
        parser.error("--r-splits must be at most --r-images")
    if args.r_k > args.r_candidates:
        parser.error("--r-k must be at most --r-candidates")
    try:
        out = check_arguments(args)  # before anything is loaded, computed or drawn
        report = evaluate(args)
        merge_into(out, report)
    except (OSError, ValueError, ImportError) as error:
        sys.exit(f"t2ifast.evaluate: {error}")
    print(f"written {out}", file=sys.stderr)
    print(json.dumps(report, indent=1))


def check_arguments(args):
    """Checks what can be checked before any work; sets args.device to the torch.device. Returns the output path.
    Raises FileNotFoundError, ValueError or ImportError naming the option and what was expected."""
    args.device = check_device("--device", args.device)
    run = Path(args.run)
    config = run_folder_config(run)
    out = Path(args.out).expanduser() if args.out else run / "evaluation.json"
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder; expected the path of a JSON file")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {str(out)!r}: its folder {str(out.parent)!r} does not exist")
    synthetic = config.data.path == "synthetic"
    if args.damsm_attributes is not None and not synthetic:
        raise ValueError(
            f"--damsm-attributes needs a run on the synthetic set (its captions' attributes are known); "
            f"this run's data.path is {config.data.path!r}"
        )
    if not (synthetic or args.r_precision or args.damsm_attributes is not None or args.inception_weights):
        raise ValueError(
            f"nothing to evaluate: the caption accuracy needs a run on the synthetic set (this run's data.path is "
            f"{config.data.path!r}); pass --r-precision or --inception-weights"
        )
    if args.inception_weights:
        from t2ifast.evaluation.inception_metrics import WEIGHTS_HINT, require_libraries

        weights = Path(args.inception_weights).expanduser()
        if not weights.exists():
            raise FileNotFoundError(f"--inception-weights {str(weights)!r} does not exist: expected {WEIGHTS_HINT}")
        if not weights.is_file():
            raise ValueError(f"--inception-weights {str(weights)!r} is not a file: expected {WEIGHTS_HINT}")
        try:
            require_libraries()
        except ImportError as error:
            raise ImportError(f"--inception-weights: {error}") from None
        if args.max_samples < 10:
            raise ValueError(
                f"--max-samples must be at least 10 with --inception-weights (the Inception Score is a mean over "
                f"10 splits); got {args.max_samples}"
            )
    return out


def merge_into(path, report):
    """Writes `report` into the JSON file at `path`, keeping the entries of an existing JSON object that `report`
    does not replace (a file that is not one is replaced, with a warning), atomically."""
    path = Path(path)
    merged = {}
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            existing = error
        if isinstance(existing, dict):
            merged = existing
        else:
            what = f"not valid JSON ({existing})" if isinstance(existing, Exception) else "not a JSON object"
            print(f"t2ifast.evaluate: warning: {path} was {what}: replaced", file=sys.stderr)
    merged.update(report)
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(merged, indent=1) + "\n")
    return merged


def evaluate(args):
    torch.manual_seed(args.seed)
    run = load_run(args.run, args.device)
    config = run.config
    size = max(image_sizes(config))  # of the final images, and of the synthetic set the run was trained on
    if config.data.path == "synthetic":
        folder = generate_synthetic(
            Path(config.train.cache_dir).expanduser() / "synthetic", config.data.synthetic_images, size,
            config.data.synthetic_seed,
        )  # fmt: skip
    else:
        folder = Path(config.data.path).expanduser()
    held_out = open_dataset(folder, "test")
    report = {}
    if config.data.path == "synthetic":
        result, ceiling = synthetic_caption_accuracy(
            folder, held_out, run.generate, config, args.device, max_samples=args.max_samples
        )
        report["caption_accuracy"] = {
            "generated": result.as_dict(), "real": ceiling, "max_samples": args.max_samples, "seed": config.train.seed,
        }  # fmt: skip
        figure = Path(args.run) / "caption_accuracy.png"
        accuracy_figure(
            {k: v for k, v in result.as_dict().items() if isinstance(v, float)},
            title=f"caption accuracy of {config.model}",
            reference={k: v for k, v in ceiling.items() if isinstance(v, float)},
            path=figure,
        )
        print(f"written {figure}", file=sys.stderr)
    if args.r_precision:
        text_encoder, image_encoder = load_damsm_encoders(args.run, args.device)
        result = evaluate_r_precision(
            run.generate, text_encoder, image_encoder, held_out, num_images=args.r_images, candidates=args.r_candidates,
            k=args.r_k, splits=args.r_splits, seed=args.seed, device=args.device, max_words=config.data.max_words,
            progress=True,
        )  # fmt: skip
        print(f"R-precision: {result}", file=sys.stderr)
        report["r_precision"] = {**result.as_dict(), "seed": args.seed}  # count, candidates, k, splits: in as_dict
    if args.damsm_attributes is not None:  # a synthetic-set run: checked by check_arguments
        text_encoder, image_encoder = load_damsm_encoders(args.run, args.device)
        score = damsm_score(
            text_encoder, image_encoder, load_vocabulary(Path(args.run) / VOCABULARY), max_words=config.data.max_words,
            gamma1=config.text.gamma1, gamma2=config.text.gamma2,
        )  # fmt: skip
        result = attribute_discrimination(
            score, held_out, load_attributes(folder), max_samples=args.damsm_attributes, seed=args.seed,
            device=args.device, image_size=size, progress=True,
        )  # fmt: skip
        print(result, file=sys.stderr)
        report["damsm_attributes"] = {**result.as_dict(), "max_samples": args.damsm_attributes, "seed": args.seed}
    if args.inception_weights:
        from t2ifast.evaluation.inception_metrics import frechet_inception_distance, inception_score

        def batches(fake):
            loader = make_loader(
                held_out, 50, backend="torch", sizes=(size,), shuffle=False, augment=False, num_workers=0
            )
            seen = 0
            for batch in loader:
                batch = batch.to(args.device)
                yield run.generate(batch) if fake else batch.images[size]
                seen += len(batch)
                if seen >= args.max_samples:
                    break

        # fid stays a plain number (as before); both are computed together, with the settings recorded here
        settings = {"max_samples": args.max_samples, "seed": args.seed}
        score = inception_score(batches(True), args.inception_weights, device=args.device, seed=args.seed)
        report["inception_score"] = {**score, **settings}
        report["fid"] = frechet_inception_distance(
            batches(False), batches(True), args.inception_weights, device=args.device
        )
    return report


if __name__ == "__main__":
    main()
