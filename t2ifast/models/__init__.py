"""Text-to-image GAN models built on t2ifast's fused layers and losses, and their text encoders."""

from .damsm import DAMSM
from .image_encoder import ImageEncoder, InceptionImageEncoder
from .matching_aware_discriminator import ImageScores, MatchingAwareDiscriminator, PairScores
from .sentence_embeddings import (
    DAMSMSentenceEmbeddings,
    MiniLMSentenceEmbeddings,
    PrecomputedSentenceEmbeddings,
    average_caption_embeddings,
)
from .text_conditioned_generator import StyleEncoder, TextConditionedGenerator
from .text_encoder import TextEncoder

__all__ = [
    "DAMSM",
    "DAMSMSentenceEmbeddings",
    "ImageEncoder",
    "ImageScores",
    "InceptionImageEncoder",
    "MatchingAwareDiscriminator",
    "MiniLMSentenceEmbeddings",
    "PairScores",
    "PrecomputedSentenceEmbeddings",
    "StyleEncoder",
    "TextConditionedGenerator",
    "TextEncoder",
    "average_caption_embeddings",
]
