"""Which caption attributes a DAMSM tells apart, on the real held-out images of the synthetic set.

A GAN conditioned on a DAMSM's sentence code, and trained with its losses, cannot learn to follow an attribute the
DAMSM does not tell apart: this measures that ceiling, on real images, before any GAN is trained.

For each held-out image and each attribute (shape, colour, size, position, background), the image's caption is
written once per value of that attribute, the rest of the caption unchanged (`make_caption` with one seeded
generator per image: the same template and words). Each scorer ranks those captions against the image; a hit when
the true caption scores strictly higher than every variant (a tie is a miss, so a scorer blind to an attribute
scores 0 on it, not chance). The DAMSM's two scorers: the sentence cosine (image code against sentence code, as
R-precision ranks) and the word-level score R(image, caption) of `damsm_word_scores`.

    text_encoder, image_encoder = load_damsm_encoders(run_dir)
    scorers = damsm_scorers(text_encoder, image_encoder, vocabulary)
    result = attribute_discrimination(scorers, open_dataset(folder, "test"), load_attributes(folder))
    print(result)                     # a table: attribute, accuracy per scorer, chance
"""

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from t2ifast.data import make_loader
from t2ifast.data.synthetic import ATTRIBUTES, make_caption
from t2ifast.evaluation.caption_accuracy import subset_of
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


def damsm_scorers(text_encoder, image_encoder, vocabulary, *, max_words=18, gamma1=4.0, gamma2=5.0):
    """{"sentence": score, "word": score} of a DAMSM, where score(image [1, 3, S, S], captions) -> [K] scores of
    the K captions (free text) against the image."""
    from t2ifast.training.artifacts import encode_captions

    def encode(image, captions):
        batch = encode_captions(captions, vocabulary, max_words, image.device)
        words, sentence = text_encoder(batch.captions, batch.caption_lengths)
        regions, code = image_encoder(image)
        return batch, words, sentence, regions, code

    def sentence_score(image, captions):
        _, _, sentence, _, code = encode(image, captions)
        return F.cosine_similarity(sentence, code.expand_as(sentence), dim=1)

    def word_score(image, captions):
        batch, words, _, regions, _ = encode(image, captions)
        return damsm_word_scores(words, batch.caption_lengths, regions.flatten(2), gamma1=gamma1, gamma2=gamma2)[0]

    return {"sentence": sentence_score, "word": word_score}


@torch.no_grad()
def attribute_discrimination(
    scorers, dataset, attributes, *, max_samples=300, seed=0, device="cpu", image_size=64, progress=False
):
    """How often each scorer ranks an image's true caption above all its one-attribute variants, per attribute.

    scorers: {name: score(image [1, 3, S, S] in [-1, 1], captions) -> [K] scores}; dataset: the held-out
    TextImageDataset of a synthetic set; attributes: t2ifast.data.load_attributes(folder). max_samples: a seeded
    random subset of this many images (None: all). Returns an AttributeDiscrimination."""
    if not scorers:
        raise ValueError("scorers must name at least one scoring function")
    dataset = subset_of(dataset, max_samples, seed)
    missing = [key for key in dataset.keys if key not in attributes]
    if missing:
        raise KeyError(
            f"{len(missing)} samples of {dataset.name} have no attributes (e.g. {missing[0]!r}): "
            "attribute discrimination needs the synthetic set's attributes.json (load_attributes)"
        )
    loader = make_loader(dataset, 1, backend="torch", sizes=(image_size,), shuffle=False, augment=False, num_workers=0)
    hits = {name: dict.fromkeys(ATTRIBUTES, 0) for name in scorers}
    batches = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, total=len(dataset), desc="DAMSM attributes", leave=False, dynamic_ncols=True)
    count = 0
    for batch in batches:
        image = batch.images[image_size].to(device)
        record = attributes[batch.keys[0]]
        for attribute in ATTRIBUTES:
            captions, truth = caption_variants(record, attribute, [seed, count])
            for name, score in scorers.items():
                scores = torch.as_tensor(score(image, captions)).float().cpu()
                others = torch.cat([scores[:truth], scores[truth + 1 :]])
                hits[name][attribute] += int(bool((scores[truth] > others).all()))
        count += 1
    return AttributeDiscrimination(
        accuracy={name: {a: n / count for a, n in per.items()} for name, per in hits.items()},
        chance={attribute: 1 / len(values) for attribute, values in ATTRIBUTES.items()},
        count=count,
    )
