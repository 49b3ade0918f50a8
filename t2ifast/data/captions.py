"""Captions: the tokeniser, the vocabulary, fixed-length word tensors, wrong captions, AttnGAN's captions.pickle.

Conventions follow the AttnGAN release so its published DAMSM text encoders can be reused:
- tokens are the `\\w+` runs of the lower-cased caption (RegexpTokenizer(r'\\w+')), non-ASCII characters dropped;
- index 0 is '<end>', which doubles as padding; real words are numbered from 1;
- a caption longer than T words keeps a random, ordered subset of T of its words ("sample") or its first T
  ("truncate").
"""

import os
import pickle
import re
import tempfile
from collections import Counter

import numpy as np
import torch

from t2ifast.data.errors import DataError

END_TOKEN = "<end>"
PAD_INDEX = 0
_WORD = re.compile(r"\w+")


def tokenize(caption):
    """Lower-cased words of a caption, punctuation and non-ASCII characters dropped (as AttnGAN does)."""
    caption = caption.replace("\ufffd\ufffd", " ")
    words = (word.encode("ascii", "ignore").decode("ascii") for word in _WORD.findall(caption.lower()))
    return [word for word in words if word]


class Vocabulary:
    """Word <-> index maps with index 0 = '<end>' (padding). Built from training captions or loaded."""

    def __init__(self, words):
        words = [word for word in words if word != END_TOKEN]
        if len(set(words)) != len(words):
            raise ValueError("Vocabulary: words must be unique")
        self.index_to_word = [END_TOKEN, *words]
        self.word_to_index = {word: index for index, word in enumerate(self.index_to_word)}

    @classmethod
    def build(cls, tokenised_captions, min_count=1):
        """Vocabulary of the words seen at least `min_count` times, most frequent first (ties alphabetical)."""
        counts = Counter(word for caption in tokenised_captions for word in caption)
        ranked = sorted((word for word, count in counts.items() if count >= min_count), key=lambda w: (-counts[w], w))
        return cls(ranked)

    @classmethod
    def from_attngan(cls, ixtoword):
        """From AttnGAN's ixtoword dict (index -> word, 0 = '<end>')."""
        if ixtoword.get(0) != END_TOKEN or sorted(ixtoword) != list(range(len(ixtoword))):
            raise ValueError("ixtoword must map 0..n-1 to words with 0 -> '<end>'")
        return cls([ixtoword[index] for index in range(1, len(ixtoword))])

    def __len__(self):
        return len(self.index_to_word)

    def __contains__(self, word):
        return word in self.word_to_index

    def encode(self, words):
        """(indices of the known words, list of the unknown words)."""
        known = [self.word_to_index[w] for w in words if w in self.word_to_index]
        unknown = [w for w in words if w not in self.word_to_index]
        return known, unknown

    def decode(self, indices):
        """The words of a caption's indices, stopping at the first '<end>'."""
        words = []
        for index in indices:
            index = int(index)
            if index == PAD_INDEX:
                break
            words.append(self.index_to_word[index])
        return " ".join(words)

    def attngan_maps(self):
        """(ixtoword, wordtoix) dicts as AttnGAN stores them."""
        return dict(enumerate(self.index_to_word)), dict(self.word_to_index)


class CaptionTable:
    """Every caption of a dataset as one padded index tensor; sample i owns rows offsets[i]:offsets[i+1].

    DALI has no tokeniser: the loaders keep this table on the Python side and look rows up by sample index.
    """

    def __init__(self, encoded_captions_per_sample):
        counts = [len(captions) for captions in encoded_captions_per_sample]
        if any(count == 0 for count in counts):
            raise ValueError("every sample needs at least one caption")
        flat = [caption for captions in encoded_captions_per_sample for caption in captions]
        longest = max((len(c) for c in flat), default=1)
        self.tokens = torch.zeros(len(flat), max(longest, 1), dtype=torch.long)
        for row, caption in enumerate(flat):
            self.tokens[row, : len(caption)] = torch.as_tensor(caption, dtype=torch.long)
        self.lengths = torch.as_tensor([len(c) for c in flat], dtype=torch.long)
        self.offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.long)

    @property
    def captions_per_sample(self):
        return self.offsets[1:] - self.offsets[:-1]

    def pick(self, sample_indices, generator):
        """One caption row per sample, uniformly among that sample's captions."""
        sample_indices = torch.as_tensor(sample_indices, dtype=torch.long)
        counts = self.captions_per_sample[sample_indices]
        choice = (torch.rand(len(sample_indices), generator=generator) * counts).long().clamp_max(counts - 1)
        return self.offsets[sample_indices] + choice

    def fixed_length(self, rows, max_words, generator, mode="sample"):
        """(tokens[B, T], lengths[B], pad_mask[B, T]) for caption rows, with T = max_words.

        Longer captions keep a random ordered subset of T words (mode="sample", as AttnGAN) or their first T
        (mode="truncate"). pad_mask is True at padded positions.
        """
        if mode not in ("sample", "truncate"):
            raise ValueError(f"mode must be 'sample' or 'truncate', got {mode!r}")
        rows = torch.as_tensor(rows, dtype=torch.long)
        tokens, lengths = self.tokens[rows], self.lengths[rows]
        width = tokens.shape[1]
        if width < max_words:
            tokens = torch.nn.functional.pad(tokens, (0, max_words - width))
            width = max_words
        positions = torch.arange(width).expand(len(rows), width)
        if mode == "sample":
            # random scores for the real words, +inf beyond the caption: the T smallest are a uniform random
            # T-subset of the words (or all of them when the caption is short), then put back in order
            scores = torch.rand(len(rows), width, generator=generator)
            scores = scores.masked_fill(positions >= lengths[:, None], float("inf"))
            keep = scores.topk(max_words, dim=1, largest=False).indices.sort(dim=1).values
        else:
            keep = positions[:, :max_words]
        out = tokens.gather(1, keep)
        new_lengths = lengths.clamp_max(max_words)
        pad_mask = torch.arange(max_words)[None, :] >= new_lengths[:, None]
        return out.masked_fill(pad_mask, PAD_INDEX), new_lengths, pad_mask


def wrong_samples(sample_indices, num_samples, class_ids, generator):
    """For each sample index, a uniformly random other sample: of another class when class ids exist.

    class_ids: None or a LongTensor[num_samples] (negative = unknown class, then any other sample qualifies).
    """
    sample_indices = torch.as_tensor(sample_indices, dtype=torch.long)
    if num_samples < 2:
        raise ValueError("wrong captions need at least two samples")
    draws = torch.rand(len(sample_indices), generator=generator)
    if class_ids is None or bool((class_ids < 0).any()) or len(torch.unique(class_ids)) < 2:
        # any sample but itself: draw from num_samples-1 and skip over the sample's own index
        other = (draws * (num_samples - 1)).long().clamp_max(num_samples - 2)
        return other + (other >= sample_indices).long()
    # samples sorted by class: class c is the block [start_c, start_c + count_c); draw among the others
    order = torch.argsort(class_ids, stable=True)
    classes, counts = torch.unique(class_ids, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    block = torch.searchsorted(classes, class_ids[sample_indices])
    start, count = starts[block], counts[block]
    others = num_samples - count
    position = (draws * others).long().clamp_max(others - 1)
    position = position + (position >= start).long() * count
    return order[position]


def read_captions_pickle(path):
    """AttnGAN's captions.pickle -> (train_captions, test_captions, vocabulary); captions are lists of indices."""
    try:
        with open(path, "rb") as f:
            train_captions, test_captions, ixtoword, wordtoix = pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, ValueError, EOFError) as error:
        raise DataError(path, f"not a readable AttnGAN captions.pickle ({error})") from error
    vocabulary = Vocabulary.from_attngan(ixtoword)
    if vocabulary.word_to_index != wordtoix:
        raise DataError(path, "ixtoword and wordtoix disagree")
    return train_captions, test_captions, vocabulary


def write_captions_pickle(path, train_captions, test_captions, vocabulary):
    """Write [train_captions, test_captions, ixtoword, wordtoix] as AttnGAN does (pickle protocol 2), atomically."""
    ixtoword, wordtoix = vocabulary.attngan_maps()
    payload = [[list(map(int, c)) for c in train_captions], [list(map(int, c)) for c in test_captions]]
    atomic_write_bytes(path, pickle.dumps([*payload, ixtoword, wordtoix], protocol=2))


def atomic_write_bytes(path, data):
    """Write a file through a temporary file in the same folder and a rename, so readers never see half of it."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
