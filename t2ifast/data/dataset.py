"""TextImageDataset: the in-memory index every reader builds (image paths, captions, classes) and the text side
of a batch (a caption per sample, fixed to T words, and a wrong caption from another sample)."""

import copy
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from t2ifast.data.captions import CaptionTable, Vocabulary, tokenize, wrong_samples
from t2ifast.data.errors import DataError, SkipReport

UNKNOWN_WORD_POLICIES = ("drop", "error")


class TextImageDataset:
    """Samples of one split: `keys[i]`, `image_paths[i]`, `captions[i]` (raw lines) and their encoded table.

    Optional per-sample fields: `class_ids` (LongTensor[N]), `crop_boxes` (int array [N, 4]: left, top, right,
    bottom in pixels, applied before any resizing), `embeddings` (FloatTensor[N, E, D]: precomputed sentence
    embeddings, row e belonging to caption e, as StackGAN's char-CNN-RNN-embeddings.pickle).
    `skipped` reports the samples left out because `skip_bad=True` was asked for.
    """

    def __init__(
        self,
        keys,
        image_paths,
        captions,
        vocabulary=None,
        *,
        caption_sources=None,
        class_ids=None,
        crop_boxes=None,
        embeddings=None,
        unknown_words="drop",
        skip_bad=False,
        name="dataset",
    ):
        if unknown_words not in UNKNOWN_WORD_POLICIES:
            raise ValueError(f"unknown_words must be one of {UNKNOWN_WORD_POLICIES}, got {unknown_words!r}")
        if not (len(keys) == len(image_paths) == len(captions)):
            raise ValueError("keys, image_paths and captions must have one entry per sample")
        caption_sources = caption_sources or image_paths
        self.name = name
        self.skipped = SkipReport()
        self.unknown_word_counts = Counter()

        tokenised = [[tokenize(line) for line in lines] for lines in captions]
        if vocabulary is None:
            vocabulary = Vocabulary.build(c for sample in tokenised for c in sample)
        self.vocabulary = vocabulary

        kept, encoded = [], []
        for i in range(len(image_paths)):
            try:
                encoded.append(self._encode_sample(tokenised[i], image_paths[i], caption_sources[i], unknown_words))
                kept.append(i)
            except DataError as error:
                if not skip_bad:
                    raise
                self.skipped.add(error)
        if self.skipped:
            warnings.warn(f"{name}: {self.skipped.summary()}", stacklevel=2)
        if not kept:
            raise DataError(Path(image_paths[0]).parent if image_paths else name, "no usable samples")
        if self.unknown_word_counts:
            common = ", ".join(f"{w!r}×{n}" for w, n in self.unknown_word_counts.most_common(5))
            warnings.warn(
                f"{name}: {sum(self.unknown_word_counts.values())} caption words are not in the vocabulary and "
                f"were dropped (most common: {common})",
                stacklevel=2,
            )

        self.keys = [keys[i] for i in kept]
        self.image_paths = [Path(image_paths[i]) for i in kept]
        self.captions = [captions[i] for i in kept]
        self._encoded = encoded
        self.table = CaptionTable(encoded)
        self.class_ids = None if class_ids is None else torch.as_tensor(np.asarray(class_ids)[kept], dtype=torch.long)
        self.crop_boxes = None if crop_boxes is None else np.asarray(crop_boxes, dtype=np.int64)[kept]
        self.embeddings = None
        if embeddings is not None:
            embeddings = torch.as_tensor(np.asarray(embeddings)[kept], dtype=torch.float32)
            if embeddings.ndim == 2:  # one embedding per image
                embeddings = embeddings[:, None, :]
            self.embeddings = embeddings

    def _encode_sample(self, caption_words, image_path, caption_source, unknown_words):
        if not Path(image_path).is_file():
            raise DataError(image_path, "image file not found")
        lines = [words for words in caption_words if words]
        if not lines:
            raise DataError(caption_source, "no caption (the caption file is empty)")
        encoded = []
        for words in lines:
            indices, unknown = self.vocabulary.encode(words)
            if unknown:
                if unknown_words == "error":
                    raise DataError(caption_source, f"words not in the vocabulary: {sorted(set(unknown))}")
                self.unknown_word_counts.update(unknown)
            if indices:
                encoded.append(indices)
        if not encoded:
            raise DataError(caption_source, "no caption has a word in the vocabulary")
        return encoded

    def __len__(self):
        return len(self.keys)

    def encoded_captions(self):
        """Every caption as a list of word indices, sample by sample (AttnGAN's order in captions.pickle)."""
        return [caption for captions in self._encoded for caption in captions]

    def subset(self, indices, skipped=()):
        """A dataset of these samples only (e.g. without the images a scan found bad); `skipped` DataErrors are
        added to its skip report."""
        indices = [int(i) for i in indices]
        if not indices:
            raise DataError(self.name, "no usable samples")
        part = copy.copy(self)
        part.keys = [self.keys[i] for i in indices]
        part.image_paths = [self.image_paths[i] for i in indices]
        part.captions = [self.captions[i] for i in indices]
        part._encoded = [self._encoded[i] for i in indices]
        part.table = CaptionTable(part._encoded)
        part.class_ids = None if self.class_ids is None else self.class_ids[indices]
        part.crop_boxes = None if self.crop_boxes is None else self.crop_boxes[indices]
        part.embeddings = None if self.embeddings is None else self.embeddings[indices]
        part.skipped = SkipReport()
        part.skipped.skipped = [*self.skipped.skipped]
        for error in skipped:
            part.skipped.add(error)
        return part

    def __repr__(self):
        return f"TextImageDataset({self.name!r}, {len(self)} samples, {len(self.vocabulary)} words)"

    def text_batch(self, indices, generator, max_words=18, mode="sample"):
        """The text side of a batch for these sample indices: right and wrong captions, classes, keys.

        A caption is drawn uniformly among the sample's captions; the wrong caption is a random caption of a
        random other sample, of another class when class ids exist (GAN-CLS's mismatched text).
        """
        indices = torch.as_tensor(indices, dtype=torch.long)
        rows = self.table.pick(indices, generator)
        captions, lengths, mask = self.table.fixed_length(rows, max_words, generator, mode)
        wrong = wrong_samples(indices, len(self), self.class_ids, generator)
        wrong_rows = self.table.pick(wrong, generator)
        wrong_captions, wrong_lengths, wrong_mask = self.table.fixed_length(wrong_rows, max_words, generator, mode)
        text = {
            "indices": indices,
            "keys": [self.keys[i] for i in indices.tolist()],
            "captions": captions,
            "caption_lengths": lengths,
            "caption_mask": mask,
            "wrong_indices": wrong,
            "wrong_captions": wrong_captions,
            "wrong_lengths": wrong_lengths,
            "wrong_mask": wrong_mask,
            "class_ids": self.class_ids[indices] if self.class_ids is not None else torch.full_like(indices, -1),
            "embeddings": None,
            "wrong_embeddings": None,
        }
        if self.embeddings is not None:
            text["embeddings"] = self._embedding_rows(indices, rows)
            text["wrong_embeddings"] = self._embedding_rows(wrong, wrong_rows)
        return text

    def _embedding_rows(self, indices, rows):
        """The precomputed embedding of each chosen caption (the first one when there is one per image)."""
        within = rows - self.table.offsets[indices]
        within = within.clamp_max(self.embeddings.shape[1] - 1)
        return self.embeddings[indices, within]
