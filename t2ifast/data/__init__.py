"""The data floor: the synthetic captioned-shapes set, dataset readers, captions, and the DALI / torch loaders.

Imports nothing from t2ifast.ops, nn or models. DALI is optional (`pip install 't2ifast[dali]'`):
t2ifast.data.dali is imported only when a DALI loader is asked for.

    folder = generate_synthetic("~/.cache/t2ifast", num_images=4000, size=64)   # or a CUB / flowers / COCO root
    train = open_dataset(folder, "train")
    for batch in make_loader(train, 64, sizes=(64, 128, 256), last_batch="drop"):
        batch.images[64], batch.captions, batch.caption_mask, batch.wrong_captions, batch.class_ids
"""

from t2ifast.data.captions import (
    PAD_INDEX,
    CaptionTable,
    Vocabulary,
    read_captions_pickle,
    tokenize,
    write_captions_pickle,
)
from t2ifast.data.dataset import TextImageDataset
from t2ifast.data.errors import DataError, SkipReport
from t2ifast.data.loader import Batch, TorchLoader, dali_available, make_loader
from t2ifast.data.readers import open_dataset, read_coco, read_folder, read_stackgan
from t2ifast.data.synthetic import ATTRIBUTES, generate_synthetic, load_attributes

__all__ = [
    "ATTRIBUTES",
    "PAD_INDEX",
    "Batch",
    "CaptionTable",
    "DataError",
    "SkipReport",
    "TextImageDataset",
    "TorchLoader",
    "Vocabulary",
    "dali_available",
    "generate_synthetic",
    "load_attributes",
    "make_loader",
    "open_dataset",
    "read_captions_pickle",
    "read_coco",
    "read_folder",
    "read_stackgan",
    "tokenize",
    "write_captions_pickle",
]
