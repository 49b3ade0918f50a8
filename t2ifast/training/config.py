"""The training configuration: nested dataclasses, read from YAML files, overridden from the command line,
checked, and saved resolved beside the run.

    config = load_config("configs/gan-int-cls-birds.yaml", overrides=["train.batch_size=32", "gan.ngf=128"])
    config.train.batch_size  # 32

Every value is checked in `validate`, and a bad one raises ConfigError naming its key and what was expected.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from t2ifast.data.synthetic import ATTRIBUTES

MODELS = ("gan-int-cls", "gan-cls", "gan-int", "gan", "stackgan", "attngan", "damsm")
GAN_INT_CLS_FAMILY = ("gan-int-cls", "gan-cls", "gan-int", "gan")
TEXT_SOURCES = ("damsm", "precomputed", "minilm")
WRONG_PAIRS = ("class", "roll")
LOADERS = ("auto", "dali", "torch")
BACKENDS = ("auto", "native", "triton", "reference")
AMP = ("none", "bf16")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


@dataclass
class DataConfig:
    path: str = "synthetic"  # "synthetic" (generated and cached) or a dataset root (CUB, flowers, COCO, folder)
    # 20000: with 3200 training images D overfits within the default job's steps at lr 4e-4 (colour 41% -> 38%
    # from step 600 to 1200); a larger set costs seconds to generate and keeps it learning (48% -> 51%)
    synthetic_images: int = 20000
    synthetic_seed: int = 0
    image_size: int = 64
    max_words: int = 18
    loader: str = "auto"  # auto = DALI when installed, else torch.utils.data
    # random crop + horizontal flip; None = on, except on the synthetic set, whose captions say left and right
    augment: bool | None = None
    workers: int = 2


@dataclass
class TextConfig:
    source: str = "damsm"  # the sentence embedding φ(t): damsm (pretrained here), precomputed (dataset file), minilm
    # DAMSM: the bi-LSTM's hidden size = the sentence and word feature size. 256 in AttnGAN (its configs here say
    # so); 128 by default, which halves a CPU DAMSM step
    embedding_dim: int = 128
    word_embedding_dim: int = 300
    encoder: str | None = None  # a DAMSM checkpoint to use instead of pretraining one
    # 600: about 150 s on a 2-core CPU. With the DAMSM loss in the default job the DAMSM judges the fakes as well
    # as encoding the text, and a longer pretraining pays: colour at 900 GAN steps went from 74% (200 steps) to
    # 77-85% (400) to 84-85% (600) (docs/training-quality.md)
    pretrain_steps: int = 600
    pretrain_batch_size: int = 48
    pretrain_lr: float = 2e-3
    image_encoder_width: int = 32
    # the scratch image encoder keeps where things are (ImageEncoder positional): a flattened map in its code and
    # a position embedding on its regions. Off (AttnGAN's layout), the 600-step DAMSM told a caption's position
    # apart at chance (13%, chance 11%); on, 97% by the sentence score (docs/training-quality.md). About 4% of a step
    image_encoder_positional: bool = True
    # synthetic set only: fill part of each pretraining batch with groups of images that differ in this attribute
    # alone (data.batch_order.ContrastGroups). "shape" took the DAMSM's shape from 44% to 88% at 2,100 steps and
    # 100% at 4,200, but only pays after about 1,500 steps, so the 600-step default leaves it off
    # (docs/training-quality.md)
    pretrain_contrast: str | None = None
    pretrain_contrast_fraction: float = 0.5  # the part of each batch in groups
    pretrain_contrast_group: int = 6  # images per group (at most one per value of the attribute)
    inception_weights: str | None = None  # Inception-v3 weights file for the DAMSM image encoder
    gamma1: float = 4.0
    gamma2: float = 5.0
    gamma3: float = 10.0
    average_captions: int = 1  # precomputed: average this many caption embeddings per image (the authors used 4)


@dataclass
class GANConfig:
    ngf: int = 32  # 128 / 64 in the paper (configs/gan-int-cls-birds.yaml); 32 keeps the CPU default job short
    ndf: int = 32
    z_dim: int = 100
    projection_dim: int = 128
    interpolation_beta: float = 0.5  # GAN-INT: β·t1 + (1 − β)·t2
    wrong_pairs: str = "class"  # GAN-CLS mismatched text: a caption of another class, or a roll of the batch
    smoothing: float = 0.0  # one-sided label smoothing of the real target
    ema_decay: float = 0.999
    style_steps: int = 100  # style encoder S trained on the finished G (0: none)
    # λ of AttnGAN's DAMSM loss (word + sentence) added to the generator loss of gan, gan-cls, gan-int and
    # gan-int-cls (not in Reed et al.: 0 reproduces them; AttnGAN's own is attngan.damsm_weight); needs
    # text.source=damsm. 1: on the synthetic set colour reaches in 600 steps what the GAN alone reaches in 4,000
    damsm_weight: float = 1.0


@dataclass
class StackGANConfig:
    condition_dim: int = 128  # c, the Conditioning Augmentation sample (StackGAN's ef_dim)
    kl_weight: float = 2.0
    residual_blocks: int = 2  # Stage II's residual blocks at 16×16 (4 in the paper)
    stage2_steps: int = 600  # Stage II (256×256) on the frozen Stage I after it; 0 (and no stage2_epochs): Stage I only
    stage2_epochs: int = 0  # Stage II for this many epochs instead of stage2_steps (as train.epochs for Stage I)
    stage2_batch_size: int = 0  # Stage II's batch size; 0: train.batch_size (the StackGAN release used 40)
    stage1_generator: str | None = None  # a trained Stage-I generator (.safetensors): skip Stage I


@dataclass
class AttnGANConfig:
    stages: int = 3  # 1, 2 or 3: images of 64, 128, 256 pixels
    condition_dim: int = 100
    residual_blocks: int = 2
    damsm_weight: float = 5.0  # λ: 5 for birds, 50 for COCO
    kl_weight: float = 1.0


@dataclass
class TrainConfig:
    out: str = "runs/t2ifast"
    seed: int = 0
    # batch 32 at lr 4e-4: tuned for the default CPU job (GAN-INT-CLS on the synthetic set), where it doubles the
    # colour accuracy of the paper's batch 64 at lr 2e-4 in the same time; 900 steps fit the job in 10 minutes on
    # 2 cores with gan.damsm_weight. The configs for real data (configs/*-birds.yaml, attngan-coco.yaml) spell out
    # the published values
    batch_size: int = 32
    steps: int = 900
    epochs: int = 0  # when > 0: train this many epochs (steps is then derived from the loader's length)
    # when > 0: each GAN stage also stops, checkpointed, at the first step after this many minutes of training
    # (under torchrun: the first log step), so that runs compare at equal wall-clock; steps / epochs stay the bound
    minutes: float = 0.0
    lr_g: float = 4e-4
    lr_d: float = 4e-4
    betas: tuple = (0.5, 0.999)
    backend: str = "auto"  # t2ifast op backend; "reference" runs the plain PyTorch paths
    amp: str = "none"
    compile: bool = False
    device: str = "auto"
    log_every: int = 25
    checkpoint_every: int = 250
    sample_every: int = 250
    keep_checkpoints: int = 3
    cache_dir: str = "~/.cache/t2ifast"


@dataclass
class EvalConfig:
    caption_accuracy: bool = True  # synthetic set only: attributes of images generated from held-out captions
    max_samples: int = 1000
    classifier_steps: int = 600
    # R-precision (AttnGAN's protocol) with the run's DAMSM encoders at the end of a run: images generated from
    # held-out captions (30000 in the paper; 0: skip), split for the mean and std
    r_precision_images: int = 1000
    r_precision_splits: int = 10
    r_precision_candidates: int = 100  # captions ranked per image: the true one and others of other classes


@dataclass
class Config:
    model: str = "gan-int-cls"
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    stackgan: StackGANConfig = field(default_factory=StackGANConfig)
    attngan: AttnGANConfig = field(default_factory=AttnGANConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self):
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values, *, where="config"):
        return _build(cls, values, where)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls, values, where):
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    built = cls()
    for name, value in values.items():
        default = getattr(built, name)
        key = f"{where}.{name}" if where != "config" else name
        if dataclasses.is_dataclass(default):
            setattr(built, name, _build(type(default), value, key))
        else:
            setattr(built, name, _coerce(key, value, default))
    return built


_KINDS = {
    bool: "true or false",
    int: "an integer",
    float: "a finite number",
    tuple: "a list of numbers",
    str: "a string",
}


def _coerce(key, value, default):
    """The value in the type of the default (YAML reads 1e-4 as a string, CLI values arrive as strings)."""
    if default is None:
        return value
    if isinstance(value, dict):
        raise ConfigError(f"{key} is a single value, not a section: got keys {sorted(value)}")
    if value is None:
        raise ConfigError(f"{key} must be {_KINDS[type(default)]}, got an empty value")
    try:
        if isinstance(default, bool):
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = yaml.safe_load(f"[{value.strip('[]() ')}]")
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return tuple(_number(v) for v in value)
        if isinstance(value, (bool, list, tuple)):
            raise ValueError  # YAML's true would pass for the integer 1, and a list is not a single value
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return _number(value)
        return str(value)
    except (TypeError, ValueError, OverflowError, yaml.YAMLError):
        raise ConfigError(f"{key} must be {_KINDS[type(default)]}, got {value!r}") from None


def _number(value):
    """A finite float (nan and inf are refused: no learning rate or weight can be either)."""
    if isinstance(value, bool):
        raise ValueError
    value = float(value)
    if not math.isfinite(value):
        raise ValueError
    return value


def apply_override(values, assignment):
    """Set `section.key=value` (value parsed as YAML) in a nested dict of values."""
    if "=" not in assignment:
        raise ConfigError(f"an override must look like section.key=value, got {assignment!r}")
    path, raw = assignment.split("=", 1)
    *sections, key = path.strip().split(".")
    target = values
    for section in sections:
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{path}: {section} is not a section")
    try:
        target[key] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: the value {raw!r} is not valid YAML") from None


def load_config(path=None, overrides=()):
    """The checked Config of a YAML file (or the defaults) with `section.key=value` overrides applied."""
    values = {}
    if path is not None:
        values = _read_yaml(path) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    for assignment in overrides:
        apply_override(values, assignment)
    config = Config.from_dict(values)
    validate(config)
    return config


# keys added after runs were first saved, with the value a run saved without them was trained with (not today's
# default): a run folder from before then still loads its weights
EARLIER_VALUES = {"text.image_encoder_positional": False}


def load_run_config(path):
    """The Config a run folder's config.yaml describes; a key in EARLIER_VALUES that the file lacks (the run
    predates it) takes its earlier value."""
    saved = _read_yaml(path) if Path(path).is_file() else {}
    missing = [key for key in EARLIER_VALUES if not _holds(saved or {}, key.split("."))]
    return load_config(path, [f"{key}={EARLIER_VALUES[key]}" for key in missing])


def _read_yaml(path):
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML ({first_line})") from None


def _holds(values, keys):
    for key in keys:
        if not isinstance(values, dict) or key not in values:
            return False
        values = values[key]
    return True


def save_config(config, path):
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _choice(key, value, choices):
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _at_least(key, value, low):
    if value < low:
        raise ConfigError(f"{key} must be at least {low}, got {value!r}")


def _within(key, value, low, high):
    if not low <= value <= high:
        raise ConfigError(f"{key} must be in [{low}, {high}], got {value!r}")


def validate(config):
    """Raise ConfigError on the first value that cannot be used."""
    _choice("model", config.model, MODELS)
    data, text, gan, train = config.data, config.text, config.gan, config.train
    _choice("data.loader", data.loader, LOADERS)
    _at_least("data.synthetic_images", data.synthetic_images, 2)
    _choice("data.image_size", data.image_size, (64,))  # the Reed et al. models are 64×64
    _at_least("data.max_words", data.max_words, 1)
    _at_least("data.workers", data.workers, 0)
    if data.augment not in (None, True, False):
        raise ConfigError(f"data.augment must be true, false or null, got {data.augment!r}")
    _choice("text.source", text.source, TEXT_SOURCES)
    for key in ("embedding_dim", "word_embedding_dim", "pretrain_batch_size", "image_encoder_width"):
        _at_least(f"text.{key}", getattr(text, key), 1)
    if text.embedding_dim % 2:
        raise ConfigError(f"text.embedding_dim must be even (two LSTM directions), got {text.embedding_dim}")
    _at_least("text.pretrain_steps", text.pretrain_steps, 0)
    _at_least("text.average_captions", text.average_captions, 1)
    if text.pretrain_contrast is not None:
        _choice("text.pretrain_contrast", text.pretrain_contrast, tuple(ATTRIBUTES))
        if data.path != "synthetic":
            raise ConfigError(
                f"text.pretrain_contrast={text.pretrain_contrast!r} needs every image's attributes, which only the "
                f"synthetic set has (data.path={data.path!r}); set text.pretrain_contrast=null"
            )
        if not 0 < text.pretrain_contrast_fraction <= 1:
            raise ConfigError(
                f"text.pretrain_contrast_fraction must be in (0, 1], got {text.pretrain_contrast_fraction!r}"
            )
        _at_least("text.pretrain_contrast_group", text.pretrain_contrast_group, 2)
    for key in ("pretrain_lr", "gamma1", "gamma2", "gamma3"):
        if getattr(text, key) <= 0:
            raise ConfigError(f"text.{key} must be positive, got {getattr(text, key)!r}")
    for key in ("ngf", "ndf", "z_dim", "projection_dim"):
        _at_least(f"gan.{key}", getattr(gan, key), 1)
    _within("gan.interpolation_beta", gan.interpolation_beta, 0.0, 1.0)
    _choice("gan.wrong_pairs", gan.wrong_pairs, WRONG_PAIRS)
    if not 0.0 <= gan.smoothing < 1.0:
        raise ConfigError(f"gan.smoothing must be in [0, 1), got {gan.smoothing!r}")
    _within("gan.ema_decay", gan.ema_decay, 0.0, 1.0)
    _at_least("gan.style_steps", gan.style_steps, 0)
    _at_least("gan.damsm_weight", gan.damsm_weight, 0.0)
    if gan.damsm_weight > 0 and config.model in GAN_INT_CLS_FAMILY and text.source != "damsm":
        raise ConfigError(
            f"gan.damsm_weight={gan.damsm_weight} needs text.source=damsm (the DAMSM's image encoder scores the "
            f"images), got text.source={text.source!r}; set gan.damsm_weight=0 for other text sources"
        )
    stackgan, attngan = config.stackgan, config.attngan
    for key in ("condition_dim", "residual_blocks"):
        _at_least(f"stackgan.{key}", getattr(stackgan, key), 1)
        _at_least(f"attngan.{key}", getattr(attngan, key), 1)
    _at_least("stackgan.stage2_steps", stackgan.stage2_steps, 0)
    _at_least("stackgan.stage2_epochs", stackgan.stage2_epochs, 0)
    if stackgan.stage2_batch_size != 0:
        _at_least("stackgan.stage2_batch_size", stackgan.stage2_batch_size, 2)
    _choice("attngan.stages", attngan.stages, (1, 2, 3))
    for key in ("stackgan.kl_weight", "attngan.kl_weight", "attngan.damsm_weight"):
        section, name = key.split(".")
        _at_least(key, getattr(getattr(config, section), name), 0.0)
    _at_least("train.batch_size", train.batch_size, 2)
    _at_least("train.steps", train.steps, 1)
    _at_least("train.epochs", train.epochs, 0)
    _at_least("train.minutes", train.minutes, 0.0)
    for key in ("lr_g", "lr_d"):
        if getattr(train, key) <= 0:
            raise ConfigError(f"train.{key} must be positive, got {getattr(train, key)!r}")
    if len(train.betas) != 2 or not all(0.0 <= b < 1.0 for b in train.betas):
        raise ConfigError(f"train.betas must be two numbers in [0, 1), got {train.betas!r}")
    _choice("train.backend", train.backend, BACKENDS)
    _choice("train.amp", train.amp, AMP)
    _choice("train.device", train.device, DEVICES)
    for key in ("log_every", "checkpoint_every", "sample_every", "keep_checkpoints"):
        _at_least(f"train.{key}", getattr(train, key), 1)
    _at_least("eval.max_samples", config.eval.max_samples, 2)
    _at_least("eval.classifier_steps", config.eval.classifier_steps, 1)
    _at_least("eval.r_precision_images", config.eval.r_precision_images, 0)
    _at_least("eval.r_precision_splits", config.eval.r_precision_splits, 1)
    _at_least("eval.r_precision_candidates", config.eval.r_precision_candidates, 2)
    if config.eval.r_precision_images and config.eval.r_precision_images < config.eval.r_precision_splits:
        raise ConfigError(
            f"eval.r_precision_images ({config.eval.r_precision_images}) must be at least eval.r_precision_splits "
            f"({config.eval.r_precision_splits}), or 0 to skip R-precision"
        )


def has_stage2(config):
    """Whether a StackGAN run of `config` ends with Stage II: trained after Stage I, or on a given Stage I."""
    stackgan = config.stackgan
    return stackgan.stage2_steps > 0 or stackgan.stage2_epochs > 0 or bool(stackgan.stage1_generator)


def image_sizes(config):
    """The image sizes a model trains on (the loader's outputs; the largest is the synthetic set's size)."""
    if config.model == "attngan":
        return tuple(64 * 2**i for i in range(config.attngan.stages))
    if config.model == "stackgan" and has_stage2(config):
        return (64, 256)
    return (config.data.image_size,)
