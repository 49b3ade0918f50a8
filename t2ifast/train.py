"""python -m t2ifast.train — train a text-to-image GAN (or pretrain its DAMSM text encoder).

With no arguments: generate the synthetic captioned-shapes set (cached), pretrain the DAMSM text encoder on it
(cached), train GAN-INT-CLS (with AttnGAN's DAMSM loss on its generator: gan.damsm_weight), train the style
encoder, and end with a sample grid (captions under the images), interpolation and style-transfer grids and the
caption-accuracy figure, all in the run folder.
`--model stackgan` trains Stage I (64×64) and then Stage II (256×256) on it; `--model attngan` trains the
attentional multi-stage generator (64/128/256) with the DAMSM loss and adds the word-by-word attention maps.

    python -m t2ifast.train                                   # the default job, in runs/t2ifast
    python -m t2ifast.train --config configs/gan-int-cls-birds.yaml --data ~/data/birds --steps 20000
    python -m t2ifast.train --model damsm --data ~/data/birds  # pretrain only the text encoder
    python -m t2ifast.train --config configs/attngan-birds.yaml --data ~/data/birds
    python -m t2ifast.train --resume                          # continue the run in --out from its last checkpoint
    torchrun --nproc_per_node=2 -m t2ifast.train ...          # DistributedDataParallel (gloo on CPU)

Any config value can be set with `--set section.key=value`; the resolved config is saved as config.yaml.
"""

import argparse
import contextlib
import hashlib
import json
import sys
from pathlib import Path

import torch

import t2ifast
from t2ifast._atomic import atomic_file
from t2ifast.data import ATTRIBUTES, Batch, DataError, generate_synthetic, load_attributes, make_loader, open_dataset
from t2ifast.data.batch_order import ContrastGroups
from t2ifast.models.sentence_embeddings import (
    DAMSMSentenceEmbeddings,
    MiniLMSentenceEmbeddings,
    PrecomputedSentenceEmbeddings,
)
from t2ifast.training import artifacts
from t2ifast.training.attngan import AttnGANTask
from t2ifast.training.config import (
    MODELS,
    ConfigError,
    has_stage2,
    image_sizes,
    load_config,
    load_run_config,
    save_config,
)
from t2ifast.training.damsm import DAMSMTask
from t2ifast.training.gan_int_cls import VARIANTS, GANINTCLSTask, StyleEncoderTask
from t2ifast.training.loop import TrainingDiverged, train
from t2ifast.training.runtime import seed_everything, start_runtime, stop_runtime
from t2ifast.training.stackgan import StackGANTask, build_stage1_generator

# command-line flags -> config keys (each is also reachable as --set key=value)
FLAGS = {
    "model": "model",
    "data": "data.path",
    "out": "train.out",
    "ngf": "gan.ngf",
    "ndf": "gan.ndf",
    "batch_size": "train.batch_size",
    "lr_g": "train.lr_g",
    "lr_d": "train.lr_d",
    "steps": "train.steps",
    "epochs": "train.epochs",
    "minutes": "train.minutes",
    "seed": "train.seed",
    "backend": "train.backend",
    "amp": "train.amp",
    "loader": "data.loader",
    "device": "train.device",
    "text_encoder": "text.encoder",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m t2ifast.train", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", help="a YAML config file (sections: data, text, gan, stackgan, attngan, train, eval)"
    )
    parser.add_argument("--model", choices=MODELS)
    parser.add_argument("--data", help="'synthetic' or a dataset root (CUB / Oxford-102 / COCO / image folder)")
    parser.add_argument("--out", help="the run folder")
    parser.add_argument("--ngf", type=int, help="generator width")
    parser.add_argument("--ndf", type=int, help="discriminator width")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr-g", type=float, help="generator learning rate")
    parser.add_argument("--lr-d", type=float, help="discriminator learning rate")
    parser.add_argument("--betas", type=float, nargs=2, metavar=("BETA1", "BETA2"), help="Adam betas")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--epochs", type=int, help="train this many epochs instead of --steps")
    parser.add_argument("--minutes", type=float, help="stop each GAN stage after this many minutes of training")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--backend", choices=("auto", *t2ifast.BACKENDS), help="t2ifast op backend")
    parser.add_argument("--amp", choices=("none", "bf16"))
    parser.add_argument("--compile", action="store_true", help="torch.compile the generator and discriminator")
    parser.add_argument("--loader", choices=("auto", "dali", "torch"))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--text-encoder", help="a DAMSM text encoder (.safetensors) to use instead of pretraining")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config value")
    return parser.parse_args(argv)


def overrides_of(args):
    overrides = [f"{key}={getattr(args, flag)}" for flag, key in FLAGS.items() if getattr(args, flag) is not None]
    if args.betas is not None:
        overrides.append(f"train.betas=[{args.betas[0]}, {args.betas[1]}]")
    if args.compile:
        overrides.append("train.compile=true")
    return overrides + list(args.set)


def main(argv=None):
    args = parse_args(argv)
    try:
        config = load_config(args.config, overrides_of(args))
        if args.resume:
            config = resumed_config(config, args)
        runtime = start_runtime(config.train.device, config.train.amp)
    except ConfigError as error:
        sys.exit(f"t2ifast.train: bad configuration: {error}")
    try:
        forced = contextlib.nullcontext() if config.train.backend == "auto" else t2ifast.backend(config.train.backend)
        with forced:
            run(config, runtime, resume=args.resume)
    except (ConfigError, DataError, FileNotFoundError) as error:
        sys.exit(f"t2ifast.train: {error}")
    except TrainingDiverged as error:
        sys.exit(f"t2ifast.train: training diverged: {error}")
    finally:
        stop_runtime(runtime)


# what a resumed run may change: how long it goes on, where and how fast it runs, what it logs and evaluates; the
# rest (models, text, data, recipe) is what its checkpoints were trained with
RESUMABLE = (
    "train.steps", "train.epochs", "train.minutes", "train.device", "train.backend", "train.amp", "train.compile",
    "train.log_every", "train.checkpoint_every", "train.sample_every", "train.keep_checkpoints", "train.cache_dir",
    "data.loader", "data.workers", "gan.style_steps", "stackgan.stage2_steps", "stackgan.stage2_epochs", "eval.",
)  # fmt: skip


def resumed_config(config, args):
    """The config of a resumed run: the run folder's own config.yaml with this command's options on top (or,
    with --config, that file's), refused if it changes more than RESUMABLE: a changed width or recipe would not
    fit the checkpoints, or would quietly make the run something else."""
    saved_path = Path(config.train.out).expanduser() / "config.yaml"
    if not saved_path.is_file():
        return config  # nothing trained yet: --resume starts the run
    saved = load_run_config(saved_path)
    if args.config is None:
        config = load_config(saved_path, [f"train.out={config.train.out}", *overrides_of(args)])
    changed = [
        key
        for key, value in _flat(config.to_dict()).items()
        if key != "train.out" and value != _flat(saved.to_dict()).get(key) and not key.startswith(RESUMABLE)
    ]
    if changed:
        now, before = _flat(config.to_dict()), _flat(saved.to_dict())
        differences = ", ".join(f"{key}: {before.get(key)!r} -> {now[key]!r}" for key in changed)
        raise ConfigError(
            f"--resume continues the run in {saved_path.parent} as its config.yaml describes it, but this command "
            f"changes {differences}; a resumed run may change only how long and how it runs "
            f"({', '.join(k.rstrip('.') for k in RESUMABLE)}); start a new run with another --out"
        )
    return config


def _flat(values, prefix=""):
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run(config, runtime, *, resume=False):
    """Every phase of a run; each phase is cached or resumable, so running it again continues."""
    out = Path(config.train.out).expanduser()
    check_run_folder(out, resume)
    check_input_files(config)
    seed_everything(config.train.seed, runtime.rank)
    folder = dataset_folder(config, runtime)
    train_set = open_dataset(folder, "train")
    if runtime.is_main:  # only once the inputs are known to be there: a refused run writes nothing
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
        artifacts.save_vocabulary(train_set.vocabulary, out / artifacts.VOCABULARY)
    if config.model == "damsm":
        damsm = pretrain_damsm(config, folder, train_set, runtime, out, resume=resume)
        if runtime.is_main:
            artifacts.save_damsm_encoders(damsm, out)
        return
    if config.model == "attngan":
        text_encoder, image_encoder = damsm_encoders(config, folder, train_set, runtime, out)
        task = train_attngan(config, train_set, text_encoder, image_encoder, runtime, out, resume=resume)
        if runtime.is_main:
            artifacts.save_weights(task.sampler, out / artifacts.GENERATOR)
            finish(config, folder, task, None, None, runtime, out)
        return
    embed, image_encoder = sentence_embeddings(config, folder, train_set, runtime, out)
    if config.model == "stackgan":
        task = train_stackgan(config, train_set, embed, runtime, out, resume=resume)
        style = None
    else:
        task = train_gan(config, train_set, embed, image_encoder, runtime, out, resume=resume)
        style = train_style_encoder(config, train_set, embed, task.sampler, runtime, out, resume=resume)
    if runtime.is_main:
        artifacts.save_weights(task.sampler, out / artifacts.GENERATOR)
        if style is not None:
            artifacts.save_weights(style.encoder, out / artifacts.STYLE_ENCODER)
        finish(config, folder, task, style, embed, runtime, out)


def check_run_folder(out, resume):
    """Refuse a train.out that is a file, or a folder that holds another run's work (checkpoints or final weights)
    unless that run is being resumed: a new run there would overwrite its config and mix its checkpoints with the
    old ones, whose higher steps the keep-newest rule would keep instead of the new run's."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"train.out={out} is a file; the run folder must be a folder")
    if resume:
        return
    work = sorted((out / "checkpoints").glob("*/checkpoint-*.pt")) + sorted(out.glob("*.safetensors"))
    if work:
        raise ConfigError(
            f"train.out={out} already holds a run ({work[-1].relative_to(out)}, ...): continue it with --resume, "
            "or give another --out (or remove the folder)"
        )


def check_input_files(config):
    """The files the config names exist, checked before anything is written or trained."""
    for key, value in (
        ("text.encoder", config.text.encoder),
        ("text.inception_weights", config.text.inception_weights),
        ("stackgan.stage1_generator", config.stackgan.stage1_generator),
    ):
        if value and not Path(value).expanduser().is_file():
            raise FileNotFoundError(f"{key}={value}: no such file")


def load_named_weights(key, module, path):
    """artifacts.load_weights; when `key` names the config value that gave `path` (the user's file, not a cache),
    a file that is not safetensors or does not fit is a ConfigError naming that key."""
    try:
        return artifacts.load_weights(module, path)
    except ValueError as error:
        if key is None:
            raise
        raise ConfigError(f"{key}: {error}") from None


def dataset_folder(config, runtime):
    if config.data.path != "synthetic":
        return Path(config.data.path).expanduser()
    root = Path(config.train.cache_dir).expanduser() / "synthetic"
    size = max(image_sizes(config))
    if runtime.is_main:  # generated once; the other ranks wait and read it
        generate_synthetic(root, config.data.synthetic_images, size, config.data.synthetic_seed)
    runtime.barrier()
    return generate_synthetic(root, config.data.synthetic_images, size, config.data.synthetic_seed)


def loader_for(config, dataset, runtime, *, batch_size, seed_offset=0, contrast=None):
    return make_loader(
        dataset,
        batch_size,
        backend=config.data.loader,
        sizes=image_sizes(config),
        augment=config.data.path != "synthetic" if config.data.augment is None else config.data.augment,
        seed=config.train.seed + seed_offset,
        max_words=config.data.max_words,
        shard_id=runtime.rank,
        num_shards=runtime.world_size,
        last_batch="drop",  # every rank runs the same number of steps; batch statistics never see a tiny batch
        num_workers=config.data.workers,
        device="gpu" if runtime.device.type == "cuda" else "cpu",
        contrast=contrast,
    )


def steps_of(config, loader):
    return config.train.epochs * len(loader) if config.train.epochs else config.train.steps


def _train_kwargs(config, loader, out, resume):
    train_config = config.train
    return {
        "out_dir": out,
        "steps": steps_of(config, loader),
        "log_every": train_config.log_every,
        "checkpoint_every": train_config.checkpoint_every,
        "sample_every": train_config.sample_every,
        "keep_checkpoints": train_config.keep_checkpoints,
        "resume": resume,
        "time_limit_s": train_config.minutes * 60 or None,
    }


def contrast_groups(config, folder, dataset):
    """The DAMSM pretraining's contrast groups (text.pretrain_contrast), or None when off."""
    text = config.text
    if text.pretrain_contrast is None:
        return None
    attributes = load_attributes(folder)
    sample_attributes = [{name: attributes[key][name] for name in ATTRIBUTES} for key in dataset.keys]
    return ContrastGroups(
        sample_attributes,
        text.pretrain_contrast,
        fraction=text.pretrain_contrast_fraction,
        group_size=text.pretrain_contrast_group,
    )


def pretrain_damsm(config, folder, dataset, runtime, out, *, resume):
    task = DAMSMTask(config, len(dataset.vocabulary), runtime, use_class_ids=dataset.class_ids is not None)
    loader = loader_for(
        config,
        dataset,
        runtime,
        batch_size=config.text.pretrain_batch_size,
        seed_offset=1,
        contrast=contrast_groups(config, folder, dataset),
    )
    kwargs = _train_kwargs(config, loader, out, resume) | {"steps": config.text.pretrain_steps, "time_limit_s": None}
    train(task, loader, runtime, **kwargs)
    return task.damsm


def damsm_cache_folder(config, dataset_path):
    """Where the DAMSM pretrained for this dataset and these text settings is kept."""
    text = config.text
    key = json.dumps(
        {
            "data": str(Path(dataset_path).resolve()),
            "max_words": config.data.max_words,
            **{k: getattr(text, k) for k in ("embedding_dim", "word_embedding_dim", "pretrain_steps")},
            **{k: getattr(text, k) for k in ("pretrain_batch_size", "pretrain_lr", "image_encoder_width")},
            # named only when on: the DAMSMs cached before the option existed were built without it
            **({"image_encoder_positional": True} if text.image_encoder_positional else {}),
            **(
                {
                    k: getattr(text, k)
                    for k in ("pretrain_contrast", "pretrain_contrast_fraction", "pretrain_contrast_group")
                }
                if text.pretrain_contrast
                else {}
            ),
            **{k: getattr(text, k) for k in ("inception_weights", "gamma1", "gamma2", "gamma3")},
            "seed": config.train.seed,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(config.train.cache_dir).expanduser() / "damsm" / f"{Path(dataset_path).name}-{digest}"


def damsm_encoders(config, folder, dataset, runtime, out):
    """(text encoder, image encoder or None) of the DAMSM: given (text.encoder, with the image encoder saved
    beside it if any), cached for this dataset and these settings, or pretrained now and cached. Both are
    copied into the run folder, for sampling and R-precision."""
    text = config.text
    text_encoder = artifacts.build_text_encoder(config, len(dataset.vocabulary))
    source = Path(text.encoder).expanduser() if text.encoder else None
    if source is None:
        cache = damsm_cache_folder(config, folder)
        source = cache / artifacts.TEXT_ENCODER
        waiting = f"waiting for another job that is pretraining the same DAMSM into {cache}"
        with runtime.exclusive(cache.with_name(cache.name + ".lock"), waiting):
            if not source.is_file() or not (cache / artifacts.IMAGE_ENCODER).is_file():
                cache_config = load_config(overrides=[f"train.out={cache}"])
                cache_config.text, cache_config.data, cache_config.train.seed = text, config.data, config.train.seed
                cache_config.train.device, cache_config.train.amp = config.train.device, config.train.amp
                damsm = pretrain_damsm(cache_config, folder, dataset, runtime, cache, resume=True)
                if runtime.is_main:
                    artifacts.save_damsm_encoders(damsm, cache)
                runtime.barrier()
    given = "text.encoder" if text.encoder else None
    load_named_weights(given, text_encoder, source)
    image_encoder = None
    if source.with_name(artifacts.IMAGE_ENCODER).is_file():
        image_encoder = load_named_weights(
            given, artifacts.build_image_encoder(config), source.with_name(artifacts.IMAGE_ENCODER)
        )
    elif config.model == "attngan" or needs_image_encoder(config):
        raise FileNotFoundError(
            f"the DAMSM loss ({'attngan' if config.model == 'attngan' else 'gan'}.damsm_weight) needs the image "
            f"encoder pretrained with the text encoder {source}: {source.with_name(artifacts.IMAGE_ENCODER)} does "
            "not exist"
        )
    if runtime.is_main:
        artifacts.save_weights(text_encoder, out / artifacts.TEXT_ENCODER)
        artifacts.copy_image_encoder(source, out)
    return text_encoder.to(runtime.device), None if image_encoder is None else image_encoder.to(runtime.device)


def needs_image_encoder(config):
    """Whether a GAN-INT-CLS-family run scores its fakes with the DAMSM image encoder (gan.damsm_weight > 0)."""
    return config.model in VARIANTS and config.gan.damsm_weight > 0


def sentence_embeddings(config, folder, dataset, runtime, out):
    """(φ(t) for the GAN, the DAMSM image encoder when the run needs it else None): φ(t) from the DAMSM text
    encoder (given, cached, or pretrained now), precomputed, or MiniLM."""
    text = config.text
    if text.source == "precomputed":
        return PrecomputedSentenceEmbeddings(dataset=dataset, average=text.average_captions), None
    if text.source == "minilm":
        return MiniLMSentenceEmbeddings(dataset.vocabulary), None
    text_encoder, image_encoder = damsm_encoders(config, folder, dataset, runtime, out)
    return DAMSMSentenceEmbeddings(text_encoder), image_encoder if needs_image_encoder(config) else None


def _preview_captions(dataset, count=16):
    """A fixed batch of captions to watch during training."""
    indices = torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).long()
    text = dataset.text_batch(indices, torch.Generator().manual_seed(0), max_words=18, mode="truncate")
    captions = [dataset.vocabulary.decode(row) for row in text["captions"]]
    return text, captions


def _preview(dataset, runtime):
    text, captions = _preview_captions(dataset)
    return {"preview_batch": Batch(images={}, **text).to(runtime.device), "preview_captions": captions}


def train_gan(config, dataset, embed, image_encoder, runtime, out, *, resume):
    task = GANINTCLSTask(config, embed, runtime, image_encoder=image_encoder, **_preview(dataset, runtime))
    loader = loader_for(config, dataset, runtime, batch_size=config.train.batch_size)
    train(task, loader, runtime, **_train_kwargs(config, loader, out, resume))
    return task


def train_stackgan(config, dataset, embed, runtime, out, *, resume):
    """Stage I for train.steps or train.epochs (or the given stackgan.stage1_generator), then Stage II on its
    frozen EMA generator for stackgan.stage2_steps or stage2_epochs, in batches of stackgan.stage2_batch_size
    (train.batch_size when 0); returns the last stage's task."""
    if config.stackgan.stage1_generator:
        stage1 = build_stage1_generator(config, embed.embedding_dim)
        stage1 = load_named_weights("stackgan.stage1_generator", stage1, config.stackgan.stage1_generator)
        stage1 = stage1.to(runtime.device)
    else:
        task = StackGANTask(config, embed, runtime, stage=1, **_preview(dataset, runtime))
        loader = loader_for(config, dataset, runtime, batch_size=config.train.batch_size)
        train(task, loader, runtime, **_train_kwargs(config, loader, out, resume))
        if not has_stage2(config):
            return task
        stage1 = task.sampler
        if runtime.is_main:
            artifacts.save_weights(stage1, out / "stage1_generator.safetensors")
    stackgan = config.stackgan
    task = StackGANTask(config, embed, runtime, stage=2, stage1_generator=stage1, **_preview(dataset, runtime))
    loader = loader_for(config, dataset, runtime, batch_size=stackgan.stage2_batch_size or config.train.batch_size)
    kwargs = _train_kwargs(config, loader, out, resume)
    kwargs["steps"] = stackgan.stage2_epochs * len(loader) if stackgan.stage2_epochs else stackgan.stage2_steps
    train(task, loader, runtime, **kwargs)
    return task


def train_attngan(config, dataset, text_encoder, image_encoder, runtime, out, *, resume):
    task = AttnGANTask(config, text_encoder, image_encoder, runtime, **_preview(dataset, runtime))
    loader = loader_for(config, dataset, runtime, batch_size=config.train.batch_size)
    train(task, loader, runtime, **_train_kwargs(config, loader, out, resume))
    return task


def train_style_encoder(config, dataset, embed, generator, runtime, out, *, resume):
    if config.gan.style_steps == 0:
        return None
    task = StyleEncoderTask(config, embed, generator, runtime)
    loader = loader_for(config, dataset, runtime, batch_size=config.train.batch_size, seed_offset=2)
    kwargs = _train_kwargs(config, loader, out, resume) | {"steps": config.gan.style_steps, "time_limit_s": None}
    train(task, loader, runtime, **kwargs)
    return task


def finish(config, folder, task, style, embed, runtime, out):
    """The pictures and figures a run ends with, and its caption accuracy and R-precision where they apply."""
    from t2ifast.sample import interpolation_grid, style_transfer_grid
    from t2ifast.visualize import accuracy_figure, attention_grid, caption_grid

    try:
        held_out = open_dataset(folder, "test")
    except DataError:
        held_out = open_dataset(folder, "train")
    text, captions = _preview_captions(held_out, 32)
    batch = Batch(images={}, **text).to(runtime.device)
    if config.model == "attngan":
        images, attention = task.sample(batch, return_attention=True)
        if attention:  # the last stage's word-by-word maps, beside the samples
            attention_grid(images[:8], attention[-1][:8], captions[:8], path=out / "attention.png")
            print(f"attention maps written to {out / 'attention.png'}")
    else:
        images = task.sample(batch)
    caption_grid(images.float().cpu(), captions, path=out / "samples.png")
    if config.model in VARIANTS:
        interpolation_grid(task.sampler, embed, batch, path=out / "interpolation.png")
        if style is not None:
            style_transfer_grid(task.sampler, style.encoder, embed, batch, path=out / "style_transfer.png")
    print(f"samples written to {out / 'samples.png'}")
    report = {}
    if config.data.path == "synthetic" and config.eval.caption_accuracy:
        from t2ifast.evaluate import synthetic_caption_accuracy

        result, ceiling = synthetic_caption_accuracy(
            folder, held_out, task.sample, config, runtime.device, max_samples=config.eval.max_samples
        )
        report["caption_accuracy"] = {"generated": result.as_dict(), "real": ceiling}
        accuracy_figure(
            {k: v for k, v in result.as_dict().items() if isinstance(v, float)},
            title=f"caption accuracy of {config.model} on held-out captions",
            reference={k: v for k, v in ceiling.items() if isinstance(v, float)},
            path=out / "caption_accuracy.png",
        )
        print(result)
        print(f"caption accuracy written to {out / 'caption_accuracy.png'}")
    if config.eval.r_precision_images and (out / artifacts.IMAGE_ENCODER).is_file():
        from t2ifast.evaluation import evaluate_r_precision

        text_encoder, image_encoder = artifacts.load_damsm_encoders(out, runtime.device)
        r_precision = evaluate_r_precision(
            task.sample,
            text_encoder,
            image_encoder,
            held_out,
            num_images=config.eval.r_precision_images,
            candidates=config.eval.r_precision_candidates,
            splits=config.eval.r_precision_splits,
            seed=config.train.seed,
            device=runtime.device,
            max_words=config.data.max_words,
        )
        report["r_precision"] = r_precision.as_dict()
        print(f"R-precision: {r_precision}")
    if report:
        with atomic_file(out / "evaluation.json") as temporary:  # the final generator's: replaces any older report
            temporary.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
