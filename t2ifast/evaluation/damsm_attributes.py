"""Which caption attributes a DAMSM tells apart, on the real held-out images of the synthetic set.

A GAN conditioned on a DAMSM's sentence code, and trained with its losses, cannot learn to follow an attribute the
DAMSM does not tell apart: this measures that ceiling, on real images, before any GAN is trained.

For each held-out image and each attribute (shape, colour, size, position, background), the image's caption is
written once per value of that attribute, the rest of the caption unchanged (`make_caption` with one seeded
generator per image: the same template and words). A scoring function scores all of an image's captions at once,
under one or more names; each named score ranks an attribute's captions, and a hit is the true caption scoring
strictly higher than every variant (a tie is a miss, so a score blind to an attribute scores 0 on it, not chance).
The DAMSM's two scores: the sentence cosine (image code against sentence code, as R-precision ranks) and the
word-level score R(image, caption) of `damsm_word_scores`.

    text_encoder, image_encoder = load_damsm_encoders(run_dir)
    score = damsm_score(text_encoder, image_encoder, vocabulary)
    result = attribute_discrimination(score, open_dataset(folder, "test"), load_attributes(folder))
    print(result)                     # a table: attribute, accuracy per scorer, chance
"""

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from t2ifast.data import make_loader
from t2ifast.data.synthetic import ATTRIBUTES, make_caption
from t2ifast.evaluation.caption_accuracy import check_attributes_known, subset_of
from t2ifast.ops import damsm_word_scores


@dataclass
class AttributeDiscrimination:
    """accuracy: {scorer: {attribute: fraction of images whose true caption beats every one-attribute variant}};
    chance: {attribute: 1 / number of values} (what a guess would score); count: images scored."""

    accuracy: dict = field(default_factory=dict)
    chance: dict = field(default_factory=dict)
    count: int = 0

    def as_dict(self):
        return {"accuracy": self.accuracy, "chance": self.chance, "count": self.count}

    def __str__(self):
        scorers = list(self.accuracy)
        lines = [
            f"attributes told apart over {self.count} real images (true caption above each one-attribute variant)",
            f"{'attribute':<11}" + "".join(f"{name:>10}" for name in scorers) + f"{'chance':>10}",
        ]
        for attribute, chance in self.chance.items():
            values = "".join(f"{self.accuracy[name][attribute]:>10.1%}" for name in scorers)
            lines.append(f"{attribute:<11}{values}{chance:>10.1%}")
        return "\n".join(lines)


def caption_variants(record, attribute, seed):
    """The captions of an image with attributes `record`, one per value of `attribute`, otherwise identical.
    Returns (captions, index of the true one)."""
    values = ATTRIBUTES[attribute]
    captions = [make_caption({**record, attribute: value}, np.random.default_rng(seed)) for value in values]
    return captions, values.index(record[attribute])


def damsm_score(text_encoder, image_encoder, vocabulary, *, max_words=18, gamma1=4.0, gamma2=5.0):
    """score(image [1, 3, S, S], captions) -> {"sentence": [K], "word": [K]}: a DAMSM's sentence cosine and word
    score of K free-text captions against the image (each encoder runs once per call)."""
    from t2ifast.training.artifacts import encode_captions

    def score(image, captions):
        batch = encode_captions(captions, vocabulary, max_words, image.device)
        words, sentence = text_encoder(batch.captions, batch.caption_lengths)
        regions, code = image_encoder(image)
        word = damsm_word_scores(words, batch.caption_lengths, regions.flatten(2), gamma1=gamma1, gamma2=gamma2)
        return {"sentence": F.cosine_similarity(sentence, code.expand_as(sentence), dim=1), "word": word[0]}

    return score


@torch.no_grad()
def attribute_discrimination(
    score, dataset, attributes, *, max_samples=300, seed=0, device="cpu", image_size=64, progress=False
):
    """How often each named score ranks an image's true caption above all its one-attribute variants, per attribute.

    score(image [1, 3, S, S] in [-1, 1], captions) -> {name: [K] scores of the K captions}, called once per image
    with the variants of every attribute; dataset: the held-out TextImageDataset of a synthetic set; attributes:
    t2ifast.data.load_attributes(folder). max_samples: a seeded random subset of this many images (None: all).
    Returns an AttributeDiscrimination."""
    dataset = subset_of(dataset, max_samples, seed)
    check_attributes_known(dataset, attributes, "attribute discrimination")
    loader = make_loader(dataset, 1, backend="torch", sizes=(image_size,), shuffle=False, augment=False, num_workers=0)
    hits = {}
    batches = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, total=len(dataset), desc="DAMSM attributes", leave=False, dynamic_ncols=True)
    count = 0
    for batch in batches:
        record = attributes[batch.keys[0]]
        variants = {attribute: caption_variants(record, attribute, [seed, count]) for attribute in ATTRIBUTES}
        captions = [caption for attribute_captions, _ in variants.values() for caption in attribute_captions]
        scores = score(batch.images[image_size].to(device), captions)
        if not scores:
            raise ValueError("score must return at least one named score")
        for name, values in scores.items():
            values = torch.as_tensor(values).float().cpu()
            per_attribute = hits.setdefault(name, dict.fromkeys(ATTRIBUTES, 0))
            start = 0
            for attribute, (attribute_captions, truth) in variants.items():
                ranked = values[start : start + len(attribute_captions)]
                others = torch.cat([ranked[:truth], ranked[truth + 1 :]])
                per_attribute[attribute] += int(bool((ranked[truth] > others).all()))
                start += len(attribute_captions)
        count += 1
    return AttributeDiscrimination(
        accuracy={name: {a: n / count for a, n in per.items()} for name, per in hits.items()},
        chance={attribute: 1 / len(values) for attribute, values in ATTRIBUTES.items()},
        count=count,
    )
