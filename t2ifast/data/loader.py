"""Batches of images and text, from DALI or from the plain torch.utils.data fallback, with one structure.

`make_loader(dataset, backend="auto")` picks DALI when it is installed (GPU decode when a GPU is there) and the
torch loader otherwise. Both loaders:
- shard like DALI's file reader: each epoch the dataset order (shuffled by seed and epoch when `shuffle`) is cut
  into `num_shards` contiguous parts and shard `shard_id` reads its part, so the shards cover every sample once;
- end an epoch by an explicit `last_batch` policy: "partial" (the last batch is smaller, nothing repeated) or
  "drop" (the incomplete last batch is left out; use it for DistributedDataParallel, where every rank must run
  the same number of steps). Nothing is ever padded by repeating samples;
- return `Batch` objects whose text side comes from `TextImageDataset.text_batch` on the Python side;
- with `contrast` (a `batch_order.ContrastGroups`), fill part of each batch with groups of samples that differ
  in one attribute only.
"""

import warnings
from dataclasses import dataclass, fields

import numpy as np
import torch

from t2ifast.data.batch_order import EpochBatches
from t2ifast.data.errors import DataError, SkipReport
from t2ifast.data.images import load_image, transform

BACKENDS = ("auto", "dali", "torch")
LAST_BATCH_POLICIES = ("partial", "drop")


@dataclass
class Batch:
    """One batch. images[size] is float [B, 3, size, size] in [-1, 1]; captions are [B, T] word indices with
    0 = padding, `*_mask` True at padded positions; class_ids are -1 where the dataset has none; embeddings are
    the dataset's precomputed sentence embeddings of the chosen captions, or None."""

    images: dict
    captions: torch.Tensor
    caption_lengths: torch.Tensor
    caption_mask: torch.Tensor
    wrong_captions: torch.Tensor
    wrong_lengths: torch.Tensor
    wrong_mask: torch.Tensor
    class_ids: torch.Tensor
    indices: torch.Tensor
    wrong_indices: torch.Tensor
    keys: list
    embeddings: torch.Tensor | None = None
    wrong_embeddings: torch.Tensor | None = None

    def __len__(self):
        return len(self.keys)

    def to(self, device, non_blocking=False):
        """The batch with every tensor on `device`."""
        moved = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device, non_blocking=non_blocking)
            elif isinstance(value, dict):
                value = {k: v.to(device, non_blocking=non_blocking) for k, v in value.items()}
            moved[field.name] = value
        return Batch(**moved)


def shard_range(num_samples, shard_id, num_shards):
    """The [start, stop) positions of shard `shard_id` (DALI's file reader splits the same way)."""
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
    return num_samples * shard_id // num_shards, num_samples * (shard_id + 1) // num_shards


def check_loader_options(batch_size, sizes, last_batch):
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not sizes or any(int(s) < 1 for s in sizes):
        raise ValueError(f"sizes must be positive image sizes, got {sizes}")
    if last_batch not in LAST_BATCH_POLICIES:
        raise ValueError(f"last_batch must be one of {LAST_BATCH_POLICIES}, got {last_batch!r}")


class _DecodedImages(torch.utils.data.Dataset):
    """Decodes and transforms one sample; errors come back as values so the main process raises or counts them."""

    def __init__(self, dataset, sizes, augment, skip_bad):
        self.dataset, self.sizes, self.augment, self.skip_bad = dataset, sizes, augment, skip_bad

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        crop = None if self.dataset.crop_boxes is None else self.dataset.crop_boxes[index]
        try:
            image = load_image(self.dataset.image_paths[index], crop)
            return index, transform(image, self.sizes, self.augment, np.random.default_rng(seed)), None
        except DataError as error:
            return index, None, error


def _collate(samples):
    return samples  # images are stacked in the main process, after bad samples are taken out


class TorchLoader:
    """The fallback loader: Pillow decoding in torch.utils.data worker processes."""

    backend = "torch"

    def __init__(
        self,
        dataset,
        batch_size,
        *,
        sizes=(64,),
        augment=True,
        shuffle=True,
        seed=0,
        max_words=18,
        caption_mode="sample",
        shard_id=0,
        num_shards=1,
        last_batch="partial",
        num_workers=2,
        skip_bad=False,
        contrast=None,
    ):
        check_loader_options(batch_size, sizes, last_batch)
        self.dataset, self.batch_size = dataset, batch_size
        self.sizes = tuple(sorted(int(s) for s in sizes))
        self.max_words, self.caption_mode = max_words, caption_mode
        self.shard = shard_range(len(dataset), shard_id, num_shards)
        self.skip_bad = skip_bad
        self.skipped = SkipReport()
        self._images = _DecodedImages(dataset, self.sizes, augment, skip_bad)
        self._sampler = EpochBatches(
            len(dataset), batch_size, shuffle, seed, self.shard, last_batch == "drop", contrast=contrast
        )
        self._num_workers = num_workers
        self._loader = None
        self._text_generator = torch.Generator().manual_seed(seed)
        self._position = 0  # batches yielded in the current epoch

    def __len__(self):
        return len(self._sampler)

    def state_dict(self):
        """Where the loader is: epoch, batches consumed in it, and the caption sampler's generator."""
        return {"epoch": self._sampler.epoch, "batch": self._position, "text_rng": self._text_generator.get_state()}

    def load_state_dict(self, state):
        """Continue from `state`: the next batch is the one an uninterrupted run would have yielded."""
        self._sampler.epoch, self._sampler.start = state["epoch"], state["batch"]
        self._position = state["batch"]
        self._text_generator.set_state(state["text_rng"])

    def __iter__(self):
        if self._loader is None:  # created once: its worker processes persist across epochs
            self._loader = torch.utils.data.DataLoader(
                self._images,
                batch_sampler=self._sampler,
                num_workers=self._num_workers,
                collate_fn=_collate,
                persistent_workers=self._num_workers > 0,
                generator=torch.Generator(),  # its own: starting an epoch must not draw from the global RNG
            )
        skipped_before = len(self.skipped)
        for samples in self._loader:
            good = []
            for index, images, error in samples:
                if error is None:
                    good.append((index, images))
                elif self.skip_bad:
                    self.skipped.add(error)
                else:
                    raise error
            self._position += 1
            if good:
                yield self._batch([i for i, _ in good], [images for _, images in good])
        self._sampler.epoch += 1
        self._position = 0
        if len(self.skipped) > skipped_before:
            warnings.warn(f"epoch {self._sampler.epoch}: {self.skipped.summary()}", stacklevel=2)

    def _batch(self, indices, images):
        stacked = {size: torch.stack([sample[size] for sample in images]) for size in self.sizes}
        text = self.dataset.text_batch(indices, self._text_generator, self.max_words, self.caption_mode)
        return Batch(images=stacked, **text)


def dali_available():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def make_loader(dataset, batch_size, backend="auto", **options):
    """A loader of `Batch`es over a TextImageDataset: DALI ("dali"), torch.utils.data ("torch"), or DALI when it
    is installed and torch otherwise ("auto"). Options: sizes, augment, shuffle, seed, max_words, caption_mode,
    shard_id, num_shards, last_batch, skip_bad, contrast; for torch num_workers; for DALI num_threads and device."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "dali" if dali_available() else "torch"
    if backend == "dali":
        if not dali_available():
            raise ImportError("backend='dali' needs NVIDIA DALI: pip install 't2ifast[dali]'")
        from t2ifast.data.dali import DaliLoader

        options.pop("num_workers", None)
        return DaliLoader(dataset, batch_size, **options)
    for name in ("num_threads", "device"):
        options.pop(name, None)
    return TorchLoader(dataset, batch_size, **options)
