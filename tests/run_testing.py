"""Helper for the tests of the command-line tools: run folders as training leaves them (config.yaml, vocabulary,
weights), of untrained tiny models, written in a second instead of trained."""

import torch

from t2ifast.models.sentence_embeddings import DAMSMSentenceEmbeddings
from t2ifast.models.text_conditioned_generator import StyleEncoder
from t2ifast.training import artifacts
from t2ifast.training.config import save_config
from t2ifast.training.gan_int_cls import build_generator
from t2ifast.training.stackgan import build_stackgan_sampler


def write_run(folder, config, vocabulary, *, image_encoder=False, style_encoder=False):
    """`folder` as a finished run of `config` over `vocabulary`: its DAMSM text encoder and generator (StackGAN's
    sampler for a stackgan config), plus the DAMSM image encoder and the style encoder when asked."""
    folder.mkdir(parents=True)
    save_config(config, folder / "config.yaml")
    artifacts.save_vocabulary(vocabulary, folder / artifacts.VOCABULARY)
    torch.manual_seed(0)
    text_encoder = artifacts.build_text_encoder(config, len(vocabulary))
    artifacts.save_weights(text_encoder, folder / artifacts.TEXT_ENCODER)
    build = build_stackgan_sampler if config.model == "stackgan" else build_generator
    embedding_dim = DAMSMSentenceEmbeddings(text_encoder).embedding_dim
    artifacts.save_weights(build(config, embedding_dim), folder / artifacts.GENERATOR)
    if image_encoder:
        artifacts.save_weights(artifacts.build_image_encoder(config), folder / artifacts.IMAGE_ENCODER)
    if style_encoder:
        style = StyleEncoder(z_dim=config.gan.z_dim, ndf=config.gan.ndf)
        artifacts.save_weights(style, folder / artifacts.STYLE_ENCODER)
    return folder
