"""R-precision: the negatives' drawing, the vectorised score against a plain loop, its extremes, splits, input
checks, the dataset-level evaluation and the `python -m t2ifast.evaluate --r-precision` path (a few seconds)."""

import json

import pytest
import torch
import torch.nn.functional as F
from run_testing import write_run

from t2ifast.data import TextImageDataset, generate_synthetic, open_dataset
from t2ifast.evaluation import RPrecision, draw_negatives, evaluate_r_precision, r_precision
from t2ifast.evaluation.r_precision import caption_groups, walk_captions
from t2ifast.models.text_encoder import TextEncoder


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _random_codes(count, dim, seed):
    return torch.randn(count, dim, generator=_generator(seed))


def _reference(image_codes, true_codes, pool, negatives, k, splits):
    """A plain loop: per image, rank the true caption among itself and its negatives by cosine similarity."""
    hits = []
    for i in range(len(image_codes)):
        true = F.cosine_similarity(image_codes[i], true_codes[i], dim=0)
        better = sum(int(F.cosine_similarity(image_codes[i], pool[j], dim=0) > true) for j in negatives[i].tolist())
        hits.append(better < k)
    parts = [[hits[j] for j in split.tolist()] for split in torch.tensor_split(torch.arange(len(hits)), splits)]
    per_split = [sum(part) / len(part) for part in parts]
    mean = sum(per_split) / len(per_split)
    std = (sum((p - mean) ** 2 for p in per_split) / len(per_split)) ** 0.5
    return mean, std, per_split


# ---- draw_negatives ----


def test_negatives_avoid_the_class_and_the_true_caption_and_are_distinct():
    pool_classes = torch.randint(0, 7, (120,), generator=_generator(1))
    true_index = torch.randint(0, 120, (300,), generator=_generator(2))
    negatives = draw_negatives(300, 120, 40, pool_classes=pool_classes, true_index=true_index, generator=_generator(0))
    assert negatives.shape == (300, 40) and negatives.dtype == torch.long
    assert bool((pool_classes[negatives] != pool_classes[true_index][:, None]).all())
    assert bool((negatives != true_index[:, None]).all())
    assert all(len(set(row.tolist())) == 40 for row in negatives)


def test_negatives_with_explicit_image_classes_exclude_both_the_class_and_the_true_caption():
    pool_classes = torch.arange(60) % 6
    image_classes = torch.full((200,), 2)
    true_index = torch.arange(200) % 60  # true captions of any class, also of class 2
    negatives = draw_negatives(
        200, 60, 45, pool_classes=pool_classes, image_classes=image_classes, true_index=true_index,
        generator=_generator(3),
    )  # fmt: skip
    assert bool((pool_classes[negatives] != 2).all()) and bool((negatives != true_index[:, None]).all())
    for row in negatives:
        assert len(set(row.tolist())) == 45


def test_negatives_are_deterministic_per_seed():
    options = {"pool_classes": torch.arange(500) % 13, "true_index": torch.arange(64) * 7}
    first = draw_negatives(64, 500, 99, **options, generator=_generator(5))
    again = draw_negatives(64, 500, 99, **options, generator=_generator(5))
    other = draw_negatives(64, 500, 99, **options, generator=_generator(6))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_negatives_without_classes_avoid_only_the_true_caption_and_cover_the_pool_uniformly():
    true_index = torch.full((4000,), 3)
    negatives = draw_negatives(4000, 20, 5, true_index=true_index, generator=_generator(7))
    counts = torch.bincount(negatives.flatten(), minlength=20)
    assert counts[3] == 0
    expected = 4000 * 5 / 19
    assert bool(((counts[torch.arange(20) != 3] - expected).abs() < 0.1 * expected).all())
    anything = draw_negatives(50, 20, 20, generator=_generator(8))  # the whole pool: every row is a permutation
    assert all(sorted(row.tolist()) == list(range(20)) for row in anything)


def test_dense_draws_take_every_eligible_caption():
    pool_classes = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2])
    # an image of class 2 has 5 eligible captions: asking for 5 gives exactly them
    negatives = draw_negatives(3, 9, 5, pool_classes=pool_classes, image_classes=torch.tensor([2, 2, 2]),
                               generator=_generator(0))  # fmt: skip
    assert all(sorted(row.tolist()) == [0, 1, 2, 3, 4] for row in negatives)


def test_draw_negatives_refuses_too_few_eligible_captions_and_bad_shapes():
    with pytest.raises(ValueError, match="candidates"):
        draw_negatives(2, 9, 6, pool_classes=torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2]),
                       image_classes=torch.tensor([2, 0]), generator=_generator(0))  # fmt: skip
    with pytest.raises(ValueError, match="candidate_classes"):
        draw_negatives(2, 9, 3, pool_classes=torch.zeros(8, dtype=torch.long), true_index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="true_index"):
        draw_negatives(2, 9, 3, true_index=torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="image_classes"):
        draw_negatives(2, 9, 3, pool_classes=torch.zeros(9, dtype=torch.long))


# ---- r_precision ----


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("with_classes", [True, False])
def test_matches_a_plain_loop(k, with_classes):
    count, pool_size, dim, candidates, splits, seed = 57, 90, 8, 12, 5, 11
    pool = _random_codes(pool_size, dim, 0)
    true_index = torch.randint(0, pool_size, (count,), generator=_generator(1))
    true_codes = pool[true_index]
    image_codes = true_codes + 1.2 * _random_codes(count, dim, 2)  # related to the captions, imperfectly
    pool_classes = torch.arange(pool_size) % 9 if with_classes else None
    result = r_precision(image_codes, true_codes, pool, pool_classes, true_index=true_index, candidates=candidates,
                         k=k, splits=splits, seed=seed, chunk_size=10)  # fmt: skip
    negatives = draw_negatives(count, pool_size, candidates - 1, pool_classes=pool_classes, true_index=true_index,
                               generator=_generator(seed))  # fmt: skip
    mean, std, per_split = _reference(image_codes, true_codes, pool, negatives, k, splits)
    assert isinstance(result, RPrecision)
    assert result.per_split == pytest.approx(per_split, abs=1e-12)
    assert (result.mean, result.std) == (pytest.approx(mean, abs=1e-12), pytest.approx(std, abs=1e-12))
    assert 0 < result.mean < 1  # neither extreme, so the comparison means something
    assert (result.count, result.candidates, result.k) == (count, candidates, k)
    again = r_precision(image_codes, true_codes, pool, pool_classes, true_index=true_index, candidates=candidates,
                        k=k, splits=splits, seed=seed)  # fmt: skip
    assert again == result  # the same seed gives the same number, whatever the chunk size


def test_perfect_codes_score_one():
    pool = _random_codes(300, 16, 0)
    true_index = torch.randperm(300, generator=_generator(1))[:200]
    result = r_precision(pool[true_index], pool[true_index], pool, torch.arange(300) % 10, true_index=true_index)
    assert result.mean == 1.0 and result.std == 0.0 and result.per_split == (1.0,) * 10


@pytest.mark.parametrize("k", [1, 3])
def test_codes_unrelated_to_the_captions_score_about_k_over_candidates(k):
    pool = _random_codes(400, 16, 0)
    true_index = torch.randint(0, 400, (6000,), generator=_generator(1))
    images = _random_codes(6000, 16, 2)
    result = r_precision(images, pool[true_index], pool, None, true_index=true_index, candidates=20, k=k, seed=4)
    assert result.mean == pytest.approx(k / 20, abs=0.015)
    assert str(result).startswith(f"R@{k} among 20 candidates")


def test_split_mean_and_std():
    pool = _random_codes(50, 8, 0)
    true_index = torch.arange(40)
    images = pool[true_index].clone()
    images[20:] *= -1  # the true caption scores lowest: never a hit
    result = r_precision(images, pool[true_index], pool, true_index=true_index, candidates=5, splits=4)
    assert result.per_split == (1.0, 1.0, 0.0, 0.0)
    assert (result.mean, result.std) == (0.5, 0.5)
    uneven = r_precision(images[15:25], pool[true_index][15:25], pool, true_index=true_index[15:25], candidates=5,
                         splits=3)  # fmt: skip
    assert uneven.per_split == pytest.approx((1.0, 1 / 3, 0.0))  # splits of 4, 3, 3 images: 5 hits, 5 misses
    assert uneven.as_dict()["per_split"] == list(uneven.per_split)
    json.dumps(uneven.as_dict())


@pytest.mark.parametrize(
    ("change", "argument"),
    [
        ({"true_codes": torch.zeros(9, 8)}, "true_codes"),
        ({"true_codes": torch.zeros(10, 7)}, "true_codes"),
        ({"candidate_codes": torch.zeros(30, 7)}, "candidate_codes"),
        ({"image_codes": torch.zeros(10)}, "image_codes"),
        ({"candidate_classes": torch.zeros(29, dtype=torch.long)}, "candidate_classes"),
        ({"image_classes": torch.zeros(9, dtype=torch.long)}, "image_classes"),
        ({"true_index": torch.arange(9)}, "true_index"),
        ({"candidates": 32}, "candidates"),  # more than 1 + the pool
        ({"candidates": 28}, "candidates"),  # more than 1 + the captions of other classes
        ({"candidates": 1}, "candidates"),
        ({"k": 6}, "k"),
        ({"k": 0}, "k"),
        ({"splits": 11}, "splits"),
    ],
)
def test_bad_inputs_name_the_argument(change, argument):
    inputs = {
        "image_codes": torch.randn(10, 8),
        "true_codes": torch.randn(10, 8),
        "candidate_codes": torch.randn(30, 8),
        "candidate_classes": torch.arange(30) % 3,
        "image_classes": torch.zeros(10, dtype=torch.long),
        "true_index": torch.arange(10),
        "candidates": 5,
        "splits": 2,
    }
    inputs.update(change)
    with pytest.raises(ValueError, match=argument):
        r_precision(**inputs)


# ---- on a dataset ----


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """24 samples (empty image files: R-precision never reads them) of 6 classes, 1-3 captions each."""
    folder = tmp_path_factory.mktemp("tiny")
    colours, shapes = ["red", "blue", "green", "white"], ["circle", "square", "star", "ring", "dot", "bar"]
    paths, captions = [], []
    for i in range(24):
        path = folder / f"{i}.png"
        path.touch()
        paths.append(path)
        captions.append([f"a {colours[(i + j) % 4]} {shapes[i % 6]} number {j} of {i}" for j in range(1 + i % 3)])
    return TextImageDataset([str(i) for i in range(24)], paths, captions, class_ids=[i % 6 for i in range(24)])


class _CaptionReader(torch.nn.Module):
    """An 'image encoder' that reads back the caption a fake generator wrote into the image's pixels."""

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, images):
        lengths = images[:, 1, 0, 0].round().long()
        captions = images[:, 0, 0, : int(lengths.max())].round().long()
        return None, self.text_encoder(captions, lengths)[1]


def _writer(batch):
    images = torch.zeros(len(batch), 3, 20, 20)
    images[:, 0, 0, : batch.captions.shape[1]] = batch.captions.float()
    images[:, 1, 0, 0] = batch.caption_lengths.float()
    return images


def test_groups_and_walk(tiny_dataset):
    groups = caption_groups(tiny_dataset)
    assert groups.tolist() == [i % 6 for i in range(24) for _ in range(1 + i % 3)]
    rows = walk_captions(48, 100, seed=3)
    assert sorted(rows[:48].tolist()) == list(range(48)) and len(rows) == 100
    assert torch.equal(rows, walk_captions(48, 100, seed=3)) and not torch.equal(rows, walk_captions(48, 100, 4))


def test_a_generator_that_draws_its_caption_scores_one(tiny_dataset):
    text_encoder = TextEncoder(len(tiny_dataset.vocabulary), embedding_dim=8, hidden_dim=16)
    result = evaluate_r_precision(_writer, text_encoder, _CaptionReader(text_encoder), tiny_dataset, num_images=60,
                                  batch_size=16, candidates=10, splits=3, progress=False)  # fmt: skip
    assert result.mean == 1.0 and result.count == 60


def test_progress_bars_cover_the_caption_encoding_and_the_generation(tiny_dataset, capsys):
    text_encoder = TextEncoder(len(tiny_dataset.vocabulary), embedding_dim=8, hidden_dim=16)
    options = {"num_images": 20, "batch_size": 16, "candidates": 5, "splits": 2}
    quiet = evaluate_r_precision(_writer, text_encoder, _CaptionReader(text_encoder), tiny_dataset, progress=False,
                                 **options)  # fmt: skip
    assert capsys.readouterr().err == ""
    loud = evaluate_r_precision(_writer, text_encoder, _CaptionReader(text_encoder), tiny_dataset, **options)
    err = capsys.readouterr().err
    assert loud == quiet
    assert "R-precision: encoding captions" in err and "/48 " in err  # every caption of the pool
    assert "R-precision: generating" in err and "/20 " in err


def test_dataset_evaluation_is_deterministic(tiny_dataset):
    from t2ifast.models.image_encoder import ImageEncoder

    torch.manual_seed(0)
    text_encoder = TextEncoder(len(tiny_dataset.vocabulary), embedding_dim=8, hidden_dim=16)
    image_encoder = ImageEncoder(16, input_size=16, width=4)

    def noise(batch):  # draws from torch's global generator, seeded by evaluate_r_precision
        assert batch.images == {} and batch.captions.shape == (len(batch), 18)
        return torch.rand(len(batch), 3, 32, 32) * 2 - 1

    options = {"num_images": 40, "batch_size": 16, "candidates": 8, "k": 2, "splits": 4, "progress": False}
    first = evaluate_r_precision(noise, text_encoder, image_encoder, tiny_dataset, seed=1, **options)
    assert first == evaluate_r_precision(noise, text_encoder, image_encoder, tiny_dataset, seed=1, **options)
    assert len(first.per_split) == 4 and 0 <= first.mean <= 1
    with pytest.raises(ValueError, match="generate"):
        evaluate_r_precision(lambda batch: torch.zeros(2, 3, 8, 8), text_encoder, image_encoder, tiny_dataset,
                             **options)  # fmt: skip


# ---- python -m t2ifast.evaluate --r-precision ----


def _fake_run(tmp_path, with_image_encoder=True):
    from t2ifast.training.config import load_config

    folder = generate_synthetic(tmp_path / "data", num_images=60, size=64, workers=1)
    overrides = [f"data.path={folder}", "text.embedding_dim=16", "text.word_embedding_dim=8",
                 "text.image_encoder_width=4", "gan.ngf=8", "gan.ndf=8"]  # fmt: skip
    config = load_config(overrides=overrides)
    vocabulary = open_dataset(folder, "train").vocabulary
    return write_run(tmp_path / "run", config, vocabulary, image_encoder=with_image_encoder)


def test_evaluate_command_reports_r_precision(tmp_path, capsys):
    from t2ifast import evaluate

    run = _fake_run(tmp_path)
    command = [str(run), "--device", "cpu", "--r-precision", "--r-images", "20", "--r-splits", "2",
               "--r-candidates", "10"]  # fmt: skip
    evaluate.main(command)
    report = json.loads((run / "evaluation.json").read_text())["r_precision"]
    assert report["count"] == 20 and report["candidates"] == 10 and len(report["per_split"]) == 2
    assert '"r_precision"' in capsys.readouterr().out
    evaluate.main(command)
    assert json.loads((run / "evaluation.json").read_text())["r_precision"] == report  # same seed, same number

    (run / "image_encoder.safetensors").unlink()
    with pytest.raises(SystemExit, match=r"image_encoder\.safetensors does not exist"):
        evaluate.main(command)


def test_damsm_encoders_are_saved_copied_and_loaded_back(tmp_path):
    from t2ifast.models.damsm import DAMSM
    from t2ifast.training import artifacts

    run = _fake_run(tmp_path, with_image_encoder=False)
    config = artifacts.load_run_config(run / "config.yaml")
    vocabulary = artifacts.load_vocabulary(run / artifacts.VOCABULARY)
    damsm = DAMSM(artifacts.build_text_encoder(config, len(vocabulary)), artifacts.build_image_encoder(config))
    artifacts.save_damsm_encoders(damsm, tmp_path / "cache")
    assert artifacts.copy_image_encoder(tmp_path / "elsewhere" / artifacts.TEXT_ENCODER, run) is None
    assert (
        artifacts.copy_image_encoder(tmp_path / "cache" / artifacts.TEXT_ENCODER, run)
        == run / "image_encoder.safetensors"
    )
    _, image_encoder = artifacts.load_damsm_encoders(run)
    assert not image_encoder.training
    for name, tensor in damsm.image_encoder.state_dict().items():
        assert torch.equal(image_encoder.state_dict()[name], tensor), name
