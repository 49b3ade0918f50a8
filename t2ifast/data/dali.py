"""The DALI loader: file reader -> decode ("mixed" = GPU decode when a GPU is there, CPU otherwise) -> crop to the
bounding box -> resize the shorter side to 76/64 of the largest size -> random square crop, random horizontal
flip -> every output size at once -> normalise to [-1, 1], CHW. Same steps as t2ifast.data.images (the fallback).

DALI has no tokeniser: its file reader's label is the sample index, and the caption table on the Python side
(TextImageDataset.text_batch) turns the indices of each batch into the text side of the Batch.

Epochs: the reader pads its shard's last batch internally (pad_last_batch=True) and the iterator is told the
policy explicitly: LastBatchPolicy.PARTIAL drops that padding (a smaller last batch, nothing repeated) and
LastBatchPolicy.DROP leaves the incomplete batch out. DALI's default (FILL, repeating samples) is never used.
"""

import concurrent.futures
import warnings

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from t2ifast.data.batch_order import EpochBatches
from t2ifast.data.errors import DataError, SkipReport
from t2ifast.data.images import enlarged_size, load_image
from t2ifast.data.loader import Batch, check_loader_options, shard_range

_POLICIES = {"partial": LastBatchPolicy.PARTIAL, "drop": LastBatchPolicy.DROP}
_MAX_LOOKUP_KEY = 65535  # fn.lookup_table's key range
_READER = "Reader"


def _lookup(index, values):
    """Per-sample value of a Python list, looked up in the pipeline by the reader's sample index."""
    return fn.lookup_table(index, keys=list(range(len(values))), values=[float(v) for v in values], dtype=types.FLOAT)


class _SampledFiles:
    """The pipeline's external source when the batches are composed in Python (contrast groups): per batch of
    `sampler` (an EpochBatches), the encoded files and their sample indices. With cycle="raise" DALI calls
    iter() again at the end of each epoch, which starts the sampler's next one."""

    def __init__(self, files, sampler):
        self.files, self.sampler = files, sampler

    def __iter__(self):
        for batch in self.sampler:
            indices = [index for index, _ in batch]
            encoded = [np.fromfile(self.files[i], dtype=np.uint8) for i in indices]
            yield encoded, [np.array([i], dtype=np.int32) for i in indices]
        self.sampler.epoch += 1


def _read_files(files, shuffle, reader_seed, shard_id, num_shards, sampled):
    """(encoded images, sample index): from DALI's file reader, or from `sampled` (a _SampledFiles) when given."""
    if sampled is not None:
        return fn.external_source(
            source=sampled, num_outputs=2, batch=True, cycle="raise", dtype=[types.UINT8, types.INT32]
        )
    return fn.readers.file(
        files=files,
        labels=list(range(len(files))),
        random_shuffle=False,
        shuffle_after_epoch=shuffle,  # a fresh permutation of the whole dataset each epoch, then cut into shards
        stick_to_shard=not shuffle,  # unshuffled: each shard keeps its part (DALI would move on to the next one)
        seed=reader_seed,
        shard_id=shard_id,
        num_shards=num_shards,
        pad_last_batch=True,
        name=_READER,
    )


@pipeline_def
def _image_pipeline(
    files, crop_boxes, sizes, augment, shuffle, reader_seed, shard_id, num_shards, decode_device, sampled
):
    encoded, index = _read_files(files, shuffle, reader_seed, shard_id, num_shards, sampled)
    if crop_boxes is not None:
        left, top = _lookup(index, crop_boxes[:, 0]), _lookup(index, crop_boxes[:, 1])
        width = _lookup(index, crop_boxes[:, 2] - crop_boxes[:, 0])
        height = _lookup(index, crop_boxes[:, 3] - crop_boxes[:, 1])
        images = fn.decoders.image_slice(
            encoded,
            fn.stack(left, top),
            fn.stack(width, height),
            axis_names="WH",
            normalized_anchor=False,
            normalized_shape=False,
            device=decode_device,
            output_type=types.RGB,
        )
    else:
        images = fn.decoders.image(encoded, device=decode_device, output_type=types.RGB)
    largest = max(sizes)
    if augment:
        images = fn.resize(images, resize_shorter=enlarged_size(largest), antialias=True)
        images = fn.crop(
            images,
            crop=(largest, largest),
            crop_pos_x=fn.random.uniform(range=(0.0, 1.0)),
            crop_pos_y=fn.random.uniform(range=(0.0, 1.0)),
        )
        mirror = fn.random.coin_flip(probability=0.5)
    else:
        images = fn.resize(images, resize_shorter=largest, antialias=True)
        images = fn.crop(images, crop=(largest, largest))  # centred
        mirror = 0
    outputs = []
    for size in sizes:
        resized = images if size == largest else fn.resize(images, size=(size, size), antialias=True)
        outputs.append(
            fn.crop_mirror_normalize(
                resized, mirror=mirror, mean=127.5, std=127.5, dtype=types.FLOAT, output_layout="CHW"
            )
        )
    return (index, *outputs)


def _decodes(path):
    try:
        load_image(path)
        return None
    except DataError as error:
        return error


def scan_images(dataset, num_threads=2):
    """DataErrors of the dataset's images Pillow cannot decode (DALI cannot skip a bad file mid-epoch)."""
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        return [error for error in pool.map(_decodes, dataset.image_paths) if error is not None]


class DaliLoader:
    """Batches from a DALI pipeline. device: "gpu" (mixed decode, outputs on the current CUDA device), "cpu"
    (CPU-only pipeline, device_id=None), or None = "gpu" when CUDA is available. With `contrast` (a
    batch_order.ContrastGroups) the batches are composed in Python, as the torch loader's, and fed to the
    pipeline instead of DALI's file reader."""

    backend = "dali"

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
        num_threads=2,
        device=None,
        skip_bad=False,
        contrast=None,
    ):
        check_loader_options(batch_size, sizes, last_batch)
        if device is None:
            device = "gpu" if torch.cuda.is_available() else "cpu"
        if device not in ("gpu", "cpu"):
            raise ValueError(f"device must be 'gpu', 'cpu' or None, got {device!r}")
        self.skipped = SkipReport()
        if skip_bad:
            bad = scan_images(dataset, num_threads)
            if bad:
                bad_paths = {error.path for error in bad}
                keep = [i for i, path in enumerate(dataset.image_paths) if str(path) not in bad_paths]
                dataset = dataset.subset(keep, skipped=bad)
                for error in bad:
                    self.skipped.add(error)
                warnings.warn(f"{dataset.name}: {self.skipped.summary()}", stacklevel=2)
        if dataset.crop_boxes is not None and len(dataset) > _MAX_LOOKUP_KEY + 1:
            raise ValueError(
                f"the DALI loader crops to bounding boxes for at most {_MAX_LOOKUP_KEY + 1} images ({dataset.name} "
                f"has {len(dataset)}): use backend='torch' or read the dataset with crop_to_bbox=False"
            )
        self.dataset, self.batch_size, self.last_batch = dataset, batch_size, last_batch
        self.sizes = tuple(sorted(int(s) for s in sizes))
        self.max_words, self.caption_mode = max_words, caption_mode
        self.shard = shard_range(len(dataset), shard_id, num_shards)
        self.device = device
        self._text_generator = torch.Generator().manual_seed(seed)
        self._epoch, self._position, self._skip = 0, 0, 0
        files = [str(path) for path in dataset.image_paths]
        self._sampler = None
        if contrast is not None:
            self._sampler = EpochBatches(
                len(dataset), batch_size, shuffle, seed, self.shard, last_batch == "drop", contrast=contrast
            )
        self._pipeline = _image_pipeline(
            files=files,
            crop_boxes=dataset.crop_boxes,
            sizes=self.sizes,
            augment=augment,
            shuffle=shuffle,
            reader_seed=seed,
            shard_id=shard_id,
            num_shards=num_shards,
            decode_device="mixed" if device == "gpu" else "cpu",
            sampled=None if self._sampler is None else _SampledFiles(files, self._sampler),
            batch_size=batch_size,
            num_threads=num_threads,
            device_id=torch.cuda.current_device() if device == "gpu" else None,
            seed=seed,
        )
        self._iterator = None  # built on the first epoch: it starts reading ahead at once

    def state_dict(self):
        """Where the loader is: epoch, batches consumed in it, and the caption sampler's generator."""
        return {"epoch": self._epoch, "batch": self._position, "text_rng": self._text_generator.get_state()}

    def load_state_dict(self, state):
        """Continue from `state`. With batches composed in Python the resumed run continues with the batches an
        uninterrupted one would have had (DALI's random crops and flips restart from its seed). DALI's reader
        cannot jump to an epoch: a fresh pipeline replays its first epoch's order, so the resumed run skips
        `batch` batches of that order (there the exact continuation is the torch loader's guarantee)."""
        if self._iterator is not None:
            raise RuntimeError("load_state_dict must be called before the loader's first epoch")
        if self._sampler is not None:
            self._sampler.epoch, self._sampler.start = state["epoch"], state["batch"]
            self._epoch, self._position = state["epoch"], state["batch"]
        else:
            if state["epoch"] > 0:
                warnings.warn(
                    f"the DALI loader resumes epoch {state['epoch']} in its first epoch's order (use the torch "
                    "loader for an exact continuation)",
                    stacklevel=2,
                )
            self._epoch, self._skip = state["epoch"], state["batch"]
        self._text_generator.set_state(state["text_rng"])

    def __len__(self):
        size = self.shard[1] - self.shard[0]
        return size // self.batch_size if self.last_batch == "drop" else -(-size // self.batch_size)

    def _start(self):
        names = ["index", *(f"image{size}" for size in self.sizes)]
        if self._sampler is not None:  # the sampler ends each epoch itself (StopIteration), full batches only
            return DALIGenericIterator(self._pipeline, names, auto_reset=False)
        return DALIGenericIterator(
            self._pipeline, names, reader_name=_READER, last_batch_policy=_POLICIES[self.last_batch], auto_reset=False
        )

    def __iter__(self):
        """One epoch (an epoch left unfinished is resumed by the next iteration: DALI cannot reset mid-epoch)."""
        if self._iterator is None:
            self._iterator = self._start()
        while True:
            try:
                outputs = next(self._iterator)[0]
            except StopIteration:
                break
            except RuntimeError as error:
                raise self._name_bad_file(error) from error
            if self._skip:
                self._skip -= 1
                self._position += 1
                continue
            self._position += 1
            indices = outputs["index"].reshape(-1).long().cpu()
            images = {size: outputs[f"image{size}"] for size in self.sizes}
            text = self.dataset.text_batch(indices, self._text_generator, self.max_words, self.caption_mode)
            yield Batch(images=images, **text)
        self._iterator.reset()
        self._epoch, self._position = self._epoch + 1, 0

    def _name_bad_file(self, error):
        """DALI's decode errors do not name the file: find it by decoding the dataset's files with Pillow."""
        bad = scan_images(self.dataset)
        if not bad:
            return error
        also = f" ({len(bad)} undecodable images in the dataset; make_loader(..., skip_bad=True) skips them)"
        return DataError(bad[0].path, f"{bad[0].problem}; DALI stopped: {str(error).splitlines()[0]}{also}")
