"""What a finished run leaves for sampling and evaluation, and how it is read back.

A run folder holds, beside its checkpoints:
    config.yaml                 the resolved configuration
    vocabulary.json             the caption vocabulary (index -> word)
    text_encoder.safetensors    the DAMSM text encoder (text.source = damsm)
    image_encoder.safetensors   the DAMSM image encoder pretrained with it (for R-precision; when saved)
    generator.safetensors       the EMA generator (StackGAN: Stage I, or both stages as one StackGAN module)
    stage1_generator.safetensors  StackGAN's Stage I alone (for stackgan.stage1_generator of another run)
    style_encoder.safetensors   the style encoder S (when trained)
Weights are safetensors files written atomically: reading them never runs code.
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from t2ifast._atomic import atomic_file
from t2ifast.data import PAD_INDEX, Vocabulary, tokenize
from t2ifast.models.image_encoder import ImageEncoder, InceptionImageEncoder
from t2ifast.models.sentence_embeddings import DAMSMSentenceEmbeddings, MiniLMSentenceEmbeddings
from t2ifast.models.text_conditioned_generator import StyleEncoder
from t2ifast.models.text_encoder import TextEncoder
from t2ifast.training.attngan import build_attngan_generator, sample_attngan
from t2ifast.training.config import ConfigError, load_run_config
from t2ifast.training.gan_int_cls import build_generator
from t2ifast.training.stackgan import build_stackgan_sampler

TEXT_ENCODER, IMAGE_ENCODER, GENERATOR, STYLE_ENCODER, VOCABULARY = (
    "text_encoder.safetensors",
    "image_encoder.safetensors",
    "generator.safetensors",
    "style_encoder.safetensors",
    "vocabulary.json",
)


def save_weights(module, path):
    """A module's state_dict as a safetensors file, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in module.state_dict().items()}
    with atomic_file(path) as temporary:
        save_file(state, temporary)


def load_weights(module, path):
    """Load a safetensors file into `module`. A file that does not fit the module (a run folder whose config.yaml
    was edited, or weights of another model) raises ValueError naming the file, not torch's RuntimeError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        weights = load_file(str(path))
    except SafetensorError as error:
        raise ValueError(f"weights file {path} is not a safetensors file ({error})") from None
    try:
        module.load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(
            f"weights file {path} does not fit the {type(module).__name__} its run's config.yaml describes: {error}"
        ) from None
    return module


def save_vocabulary(vocabulary, path):
    Path(path).write_text(json.dumps(vocabulary.index_to_word))


def load_vocabulary(path):
    return Vocabulary(json.loads(Path(path).read_text())[1:])  # index 0 is '<end>'


def build_text_encoder(config, vocabulary_size):
    text = config.text
    return TextEncoder(vocabulary_size, embedding_dim=text.word_embedding_dim, hidden_dim=text.embedding_dim)


def build_image_encoder(config):
    """The DAMSM image encoder of `config` (as t2ifast.training.damsm.build_damsm builds it), untrained; with
    text.inception_weights the Inception-v3 trunk is read from that file."""
    text = config.text
    if text.inception_weights:
        return InceptionImageEncoder(text.inception_weights, embedding_dim=text.embedding_dim)
    return ImageEncoder(
        embedding_dim=text.embedding_dim, width=text.image_encoder_width, positional=text.image_encoder_positional
    )


def save_damsm_encoders(damsm, folder):
    """A pretrained DAMSM's text and image encoders as folder/text_encoder.safetensors and
    folder/image_encoder.safetensors."""
    save_weights(damsm.text_encoder, Path(folder) / TEXT_ENCODER)
    save_weights(damsm.image_encoder, Path(folder) / IMAGE_ENCODER)


def copy_image_encoder(text_encoder_path, folder):
    """Copy the image encoder saved beside a text encoder file (its folder's image_encoder.safetensors) into
    `folder`, atomically. Returns the path written, or None when there is none beside it (the text encoder was
    then pretrained before image encoders were saved, or given without one)."""
    source = Path(text_encoder_path).expanduser().with_name(IMAGE_ENCODER)
    target = Path(folder) / IMAGE_ENCODER
    if not source.is_file():
        return None
    if source.resolve() == target.resolve():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_damsm_encoders(run_dir, device="cpu"):
    """(text_encoder, image_encoder): the DAMSM encoders a run folder holds, in eval mode on `device`.

    Raises FileNotFoundError naming the missing file: R-precision needs both."""
    run_dir = Path(run_dir)
    config = run_folder_config(run_dir)
    for name in (TEXT_ENCODER, IMAGE_ENCODER):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"{run_dir / name} does not exist: R-precision needs the DAMSM text and image encoders the run was "
                "trained with (runs whose DAMSM was pretrained before image encoders were saved have none; "
                f"pretrain again, or put the DAMSM's {IMAGE_ENCODER} there)"
            )
    vocabulary = load_vocabulary(run_dir / VOCABULARY)
    text_encoder = load_weights(build_text_encoder(config, len(vocabulary)), run_dir / TEXT_ENCODER)
    image_encoder = load_weights(build_image_encoder(config), run_dir / IMAGE_ENCODER)
    return text_encoder.to(device).eval(), image_encoder.to(device).eval()


def encode_captions(captions, vocabulary, max_words, device):
    """Free-text captions as a batch-like object with word indices, lengths and masks (truncated to max_words)."""
    rows = []
    for caption in captions:
        indices, unknown = vocabulary.encode(tokenize(caption))
        if not indices:
            raise ValueError(f"caption {caption!r} has no word of the model's vocabulary (unknown: {unknown})")
        rows.append(indices[:max_words])
    width = max(len(r) for r in rows)
    words = torch.full((len(rows), width), PAD_INDEX, dtype=torch.long)
    for i, row in enumerate(rows):
        words[i, : len(row)] = torch.tensor(row)
    lengths = torch.tensor([len(r) for r in rows])
    return SimpleNamespace(
        captions=words.to(device), caption_lengths=lengths.to(device), caption_mask=(words == PAD_INDEX).to(device)
    )


@dataclass
class FinishedRun:
    """The models of a finished GAN run (see `load_run`), in eval mode on `device`.

    `generate(batch, z)` draws final-resolution images for any model: 64×64 for the GAN-INT-CLS family,
    Stage II's 256×256 for StackGAN (Stage I's 64×64 when the run had no Stage II), the last stage's for AttnGAN.
    """

    config: object
    vocabulary: Vocabulary
    device: torch.device
    generator: torch.nn.Module  # generator.safetensors, rebuilt by the builder its training uses
    embed: object | None  # sentence embeddings (batch, which) -> [B, E]; None for AttnGAN, see text_encoder
    text_encoder: torch.nn.Module | None  # AttnGAN's DAMSM text encoder (word and sentence features), else None
    style_encoder: torch.nn.Module | None

    @property
    def z_dim(self):
        return self.config.gan.z_dim

    def encode_captions(self, captions):
        """Free-text captions as a caption batch on the run's device (see `encode_captions`)."""
        return encode_captions(captions, self.vocabulary, self.config.data.max_words, self.device)

    def embed_captions(self, captions):
        """The sentence embeddings [B, E] of free-text captions (GAN-INT-CLS family and StackGAN runs)."""
        return self.embed(self.encode_captions(captions), "right")

    @torch.no_grad()
    def generate(self, batch, z=None, *, return_attention=False):
        """Final-resolution images [B, 3, S, S] in [-1, 1] for a caption batch on the run's device (a Batch, or
        `encode_captions`'s), as the run's training task samples them. z: the noise [B, z_dim], drawn when None.
        AttnGAN runs only: with ``return_attention=True`` the pair (images, attention) of `sample_attngan`."""
        if self.config.model == "attngan":
            return sample_attngan(self.generator, self.text_encoder, batch, z, return_attention=return_attention)
        if return_attention:
            raise ValueError(f"return_attention needs an attngan run; this one has model {self.config.model}")
        embedding = self.embed(batch, "right")
        if z is None:
            z = torch.randn(len(embedding), self.z_dim, device=embedding.device)
        images = self.generator(z, embedding)
        return images.image if self.config.model == "stackgan" else images

    def generate_captions(self, captions, z=None, *, return_attention=False):
        """`generate` for free-text captions."""
        return self.generate(self.encode_captions(captions), z, return_attention=return_attention)


def _sentence_embeddings(config, vocabulary, run_dir, device):
    if config.text.source == "damsm":
        return DAMSMSentenceEmbeddings(_load_text_encoder(config, vocabulary, run_dir, device))
    if config.text.source == "minilm":
        return MiniLMSentenceEmbeddings(vocabulary)
    raise ConfigError("sampling from free text needs a text encoder: this run used precomputed embeddings")


def _load_text_encoder(config, vocabulary, run_dir, device):
    return load_weights(build_text_encoder(config, len(vocabulary)), run_dir / TEXT_ENCODER).to(device).eval()


def run_folder_config(run_dir):
    """The Config of the run in `run_dir`; a missing folder, a file, or a folder without config.yaml raises
    FileNotFoundError saying which."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is a file; give the run folder that holds config.yaml and the weights")
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a t2ifast run folder (no config.yaml)")
    return load_run_config(run_dir / "config.yaml")


def load_run(run_dir, device="cpu"):
    """The models of a finished GAN-INT-CLS-family, StackGAN or AttnGAN run as a FinishedRun, in eval mode on
    `device`; the generator is built by the builder its training uses, for the run's config.model."""
    run_dir = Path(run_dir)
    config = run_folder_config(run_dir)
    if config.model == "damsm":
        raise ConfigError(f"{run_dir} is a DAMSM pretraining run: it has no generator to sample from")
    vocabulary = load_vocabulary(run_dir / VOCABULARY)
    device = torch.device(device)
    embed = text_encoder = None
    if config.model == "attngan":  # on the DAMSM's word and sentence features, whatever text.source says
        text_encoder = _load_text_encoder(config, vocabulary, run_dir, device)
        generator = build_attngan_generator(config, text_encoder.hidden_dim)
    else:
        embed = _sentence_embeddings(config, vocabulary, run_dir, device)
        build = build_stackgan_sampler if config.model == "stackgan" else build_generator
        generator = build(config, embed.embedding_dim)
    generator = load_weights(generator, run_dir / GENERATOR).to(device).eval()
    style_encoder = None
    if (run_dir / STYLE_ENCODER).is_file():
        style_encoder = StyleEncoder(z_dim=config.gan.z_dim, ndf=config.gan.ndf)
        style_encoder = load_weights(style_encoder, run_dir / STYLE_ENCODER).to(device).eval()
    return FinishedRun(config, vocabulary, device, generator, embed, text_encoder, style_encoder)
