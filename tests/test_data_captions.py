"""Captions: tokeniser, vocabulary, fixed-length word tensors, wrong captions, AttnGAN's captions.pickle."""

import pickle

import pytest
import torch

from t2ifast.data import CaptionTable, DataError, Vocabulary, read_captions_pickle, tokenize, write_captions_pickle
from t2ifast.data.captions import wrong_samples


def test_tokenize_like_attngan():
    # RegexpTokenizer(r'\w+') on the lower-cased caption; non-ASCII letters dropped; underscores and digits kept
    assert tokenize("This bird's wings are BLUE, with 2 white-bars!") == [
        "this", "bird", "s", "wings", "are", "blue", "with", "2", "white", "bars",
    ]  # fmt: skip
    assert tokenize("café  naïve\ufffd\ufffdword") == ["caf", "nave", "word"]
    assert tokenize("...") == []


def test_vocabulary_build_encode_decode():
    captions = [tokenize("a red bird"), tokenize("a blue bird"), tokenize("the bird")]
    vocabulary = Vocabulary.build(captions)
    assert vocabulary.index_to_word[0] == "<end>"
    assert vocabulary.word_to_index["<end>"] == 0
    assert vocabulary.index_to_word[1] == "bird"  # most frequent first
    assert len(vocabulary) == 6
    indices, unknown = vocabulary.encode(["a", "green", "bird"])
    assert unknown == ["green"]
    assert vocabulary.decode([*indices, 0, vocabulary.word_to_index["red"]]) == "a bird"
    assert len(Vocabulary.build(captions, min_count=2)) == 3  # <end>, bird, a


def _table(rng_seed=0, num_samples=30, max_len=25):
    generator = torch.Generator().manual_seed(rng_seed)
    encoded = []
    for _ in range(num_samples):
        count = int(torch.randint(1, 5, (1,), generator=generator))
        # words 1..len strictly increasing, so an ordered subset is recognisable
        encoded.append(
            [list(range(1, int(torch.randint(1, max_len, (1,), generator=generator)) + 1)) for _ in range(count)]
        )
    return encoded, CaptionTable(encoded)


@pytest.mark.parametrize("mode", ["sample", "truncate"])
def test_fixed_length_sample_and_truncate(mode):
    encoded, table = _table()
    flat = [c for captions in encoded for c in captions]
    generator = torch.Generator().manual_seed(1)
    rows = torch.arange(len(flat))
    T = 8
    tokens, lengths, mask = table.fixed_length(rows, T, generator, mode)
    assert tokens.shape == (len(flat), T) and mask.shape == (len(flat), T)
    seen_long_sample = set()
    for row, caption in enumerate(flat):
        n = min(len(caption), T)
        assert lengths[row] == n
        assert mask[row].tolist() == [False] * n + [True] * (T - n)
        kept = tokens[row, :n].tolist()
        assert (tokens[row, n:] == 0).all()
        if len(caption) <= T:
            assert kept == caption
        elif mode == "truncate":
            assert kept == caption[:T]
        else:
            assert kept == sorted(set(kept)) and set(kept) <= set(caption)  # an ordered subset, no repeats
            seen_long_sample.add(tuple(kept))
    if mode == "sample":
        assert len(seen_long_sample) > 1  # random subsets, not always the same words


def test_sampled_subset_is_uniform_over_words():
    table = CaptionTable([[list(range(1, 21))]])
    generator = torch.Generator().manual_seed(0)
    tokens, _, _ = table.fixed_length(torch.zeros(4000, dtype=torch.long), 5, generator)
    counts = torch.bincount(tokens.flatten(), minlength=21)[1:].float()
    # each of 20 words kept with probability 5/20: 1000 expected per word
    assert (counts - 1000).abs().max() < 120, counts


def test_pick_draws_each_caption_of_the_sample():
    _, table = _table(num_samples=5)
    generator = torch.Generator().manual_seed(3)
    for sample in range(5):
        rows = table.pick(torch.full((400,), sample), generator)
        start, stop = int(table.offsets[sample]), int(table.offsets[sample + 1])
        assert set(rows.tolist()) == set(range(start, stop))


def test_wrong_samples_of_another_class():
    generator = torch.Generator().manual_seed(0)
    class_ids = torch.tensor([0, 0, 1, 1, 1, 2, 5, 5, 5, 5])
    indices = torch.arange(10).repeat(300)
    wrong = wrong_samples(indices, 10, class_ids, generator)
    assert (class_ids[wrong] != class_ids[indices]).all()
    for sample in range(10):
        others = set((class_ids != class_ids[sample]).nonzero().flatten().tolist())
        assert set(wrong[indices == sample].tolist()) == others  # every qualifying sample gets drawn


def test_wrong_samples_without_classes_is_any_other_sample():
    generator = torch.Generator().manual_seed(0)
    indices = torch.arange(6).repeat(200)
    wrong = wrong_samples(indices, 6, None, generator)
    assert (wrong != indices).all()
    assert set(wrong[indices == 2].tolist()) == {0, 1, 3, 4, 5}
    with pytest.raises(ValueError, match="two samples"):
        wrong_samples(torch.tensor([0]), 1, None, generator)


def test_captions_pickle_round_trip_in_attngan_format(tmp_path):
    vocabulary = Vocabulary(["bird", "red", "wings"])
    path = tmp_path / "captions.pickle"
    write_captions_pickle(path, [[1, 2], [3]], [[2, 1]], vocabulary)
    with open(path, "rb") as f:
        raw = pickle.load(f)
    # exactly what AttnGAN's load_text_data unpacks
    train, test, ixtoword, wordtoix = raw
    assert train == [[1, 2], [3]] and test == [[2, 1]]
    assert ixtoword == {0: "<end>", 1: "bird", 2: "red", 3: "wings"}
    assert wordtoix == {"<end>": 0, "bird": 1, "red": 2, "wings": 3}
    train, test, loaded = read_captions_pickle(path)
    assert loaded.index_to_word == vocabulary.index_to_word and test == [[2, 1]]


def test_read_captions_pickle_written_by_attngan(tmp_path):
    # AttnGAN (python 2 or 3) writes with protocol 2; its vocabulary order is arbitrary
    ixtoword = {0: "<end>", 1: "this", 2: "bird", 3: "is", 4: "blue"}
    wordtoix = {w: i for i, w in ixtoword.items()}
    with open(tmp_path / "captions.pickle", "wb") as f:
        pickle.dump([[[1, 2, 3, 4]], [[2, 3]], ixtoword, wordtoix], f, protocol=2)
    _, _, vocabulary = read_captions_pickle(tmp_path / "captions.pickle")
    assert vocabulary.encode(tokenize("This bird is BLUE."))[0] == [1, 2, 3, 4]


def test_read_captions_pickle_errors_name_the_file(tmp_path):
    bad = tmp_path / "captions.pickle"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"captions\.pickle"):
        read_captions_pickle(bad)
    with open(bad, "wb") as f:
        pickle.dump([[], [], {0: "<end>", 1: "a"}, {"<end>": 0, "b": 1}], f)
    with pytest.raises(DataError, match="disagree"):
        read_captions_pickle(bad)
