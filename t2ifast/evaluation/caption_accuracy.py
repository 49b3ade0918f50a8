"""Caption accuracy on the synthetic captioned-shapes set: do generated images show what their captions say?

For every held-out sample a caption is drawn (seeded), the caller's `generate(batch)` draws one image per caption,
and the attribute classifier predicts each attribute of each image; a prediction is right when it equals the true
attribute of the sample whose caption was used. Scoring the real held-out images the same way gives the ceiling a
perfect generator would reach (the classifier's own error); guessing scores about 1 / number of values.

    classifier, _ = load_or_train_attribute_classifier(folder, cache_dir)
    test, attributes = open_dataset(folder, "test"), load_attributes(folder)
    result = caption_accuracy(lambda batch: generator(z(batch), embed(batch)), test, attributes, classifier)
    print(result)                     # a table: attribute, accuracy, chance
    ceiling = caption_accuracy_of_real_images(test, attributes, classifier)
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from t2ifast.data import make_loader
from t2ifast.evaluation.attribute_classifier import attribute_targets, chance_accuracy


@dataclass
class CaptionAccuracy:
    """per_attribute: {attribute: fraction of images whose attribute matches their caption}; overall: their mean;
    all_correct: fraction of images with every attribute right; count: images scored."""

    per_attribute: dict = field(default_factory=dict)
    overall: float = 0.0
    all_correct: float = 0.0
    count: int = 0
    chance: dict = field(default_factory=dict)  # {attribute: 1 / number of values}, for reading the table

    def as_dict(self):
        """A flat {name: value} (attributes, "overall", "all_correct" as floats; "count" as int), e.g. for JSON,
        TensorBoard or t2ifast.visualize.accuracy_figure."""
        return {**self.per_attribute, "overall": self.overall, "all_correct": self.all_correct, "count": self.count}

    def __str__(self):
        width = max(len(name) for name in [*self.per_attribute, "all correct"])
        lines = [f"caption accuracy over {self.count} images", f"{'attribute':<{width}}  accuracy  chance"]
        for name, value in self.per_attribute.items():
            chance = self.chance.get(name)
            lines.append(f"{name:<{width}}  {value:>8.1%}  " + (f"{chance:>6.1%}" if chance is not None else ""))
        lines.append(f"{'overall':<{width}}  {self.overall:>8.1%}")
        lines.append(f"{'all correct':<{width}}  {self.all_correct:>8.1%}")
        return "\n".join(lines)


def subset_of(dataset, max_samples, seed):
    """A seeded random subset of max_samples samples in dataset order (the dataset is sorted by class, so its
    first samples would all be of a few classes)."""
    if max_samples is not None and max_samples < 2:
        # the loader draws each batch's wrong captions from another sample
        raise ValueError(f"max_samples must be at least 2, got {max_samples}")
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    chosen = np.random.default_rng([seed, len(dataset)]).choice(len(dataset), size=max_samples, replace=False)
    return dataset.subset(sorted(chosen.tolist()))


def check_attributes_known(dataset, attributes, purpose):
    """Raises KeyError naming a sample of `dataset` that `attributes` (load_attributes) does not know."""
    missing = [key for key in dataset.keys if key not in attributes]
    if missing:
        raise KeyError(
            f"{len(missing)} samples of {dataset.name} have no attributes (e.g. {missing[0]!r}): "
            f"{purpose} needs the synthetic set's attributes.json (load_attributes)"
        )


@torch.no_grad()
def caption_accuracy(
    generate,
    dataset,
    attributes,
    classifier,
    *,
    batch_size=64,
    max_samples=None,
    seed=0,
    device="cpu",
    image_size=64,
    progress=False,
):
    """Caption accuracy of `generate` on the held-out captions of `dataset`. Returns a CaptionAccuracy.

    generate(batch) -> images [B, 3, H, W] in [-1, 1], one per caption of the t2ifast.data.Batch it receives (moved
    to `device`; batch.images[image_size] holds the real images). dataset: the held-out TextImageDataset of a
    synthetic set; attributes: t2ifast.data.load_attributes(folder); classifier: an AttributeClassifier.
    max_samples: score a seeded random subset of this many samples. Deterministic given `seed` (the captions are
    drawn by the loader's seeded generator; torch's global generator is seeded with it for `generate`, then
    restored)."""
    dataset = subset_of(dataset, max_samples, seed)
    check_attributes_known(dataset, attributes, "caption accuracy")
    classifier = classifier.to(device).eval()
    sizes = tuple(sorted({int(image_size), classifier.image_size}))
    loader = make_loader(
        dataset, batch_size, backend="torch", sizes=sizes, shuffle=False, augment=False, seed=seed, num_workers=0
    )
    names = list(classifier.attributes)
    correct = dict.fromkeys(names, 0)
    all_correct = count = 0
    batches = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc="caption accuracy", leave=False, dynamic_ncols=True)
    where = torch.device(device)
    devices = [torch.cuda.current_device() if where.index is None else where.index] if where.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for batch in batches:
            batch = batch.to(device)
            images = generate(batch)
            if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[:2] != (len(batch), 3):
                shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
                raise ValueError(f"generate(batch) must return [{len(batch)}, 3, H, W] images, got {shape}")
            predicted = classifier.predict(images.to(device))
            targets = attribute_targets(batch.keys, attributes, classifier.attributes)
            right = torch.ones(len(batch), dtype=torch.bool)
            for name in names:
                hit = predicted[name].cpu() == targets[name]
                correct[name] += int(hit.sum())
                right &= hit
            all_correct += int(right.sum())
            count += len(batch)
    per_attribute = {name: correct[name] / count for name in names}
    return CaptionAccuracy(
        per_attribute=per_attribute,
        overall=sum(per_attribute.values()) / len(per_attribute),
        all_correct=all_correct / count,
        count=count,
        chance=chance_accuracy(classifier.attributes),
    )


def caption_accuracy_of_real_images(dataset, attributes, classifier, *, image_size=64, **options):
    """The ceiling: caption accuracy of the real held-out images themselves (what a perfect generator scores).
    Same options as caption_accuracy."""
    return caption_accuracy(
        lambda batch: batch.images[image_size], dataset, attributes, classifier, image_size=image_size, **options
    )
