"""The attribute classifier, caption accuracy and the Inception metrics' error paths.

One small synthetic set and one briefly trained classifier are built per module (about 10 s on two CPU cores)."""

import sys
import warnings

import pytest
import torch

from t2ifast.data import ATTRIBUTES, generate_synthetic, load_attributes, make_loader, open_dataset
from t2ifast.evaluation import (
    AttributeClassifier,
    CaptionAccuracy,
    caption_accuracy,
    caption_accuracy_of_real_images,
    chance_accuracy,
    inception_metrics,
    load_attribute_classifier,
    load_or_train_attribute_classifier,
    save_attribute_classifier,
    train_attribute_classifier,
)
from t2ifast.evaluation import attribute_classifier as classifier_module

STEPS, BATCH = 300, 32  # a short budget: well above chance on every attribute, not the > 99% of the defaults


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("shapes"), num_images=600, size=64, workers=1)


@pytest.fixture(scope="module")
def trained(synthetic):
    return train_attribute_classifier(synthetic, steps=STEPS, batch_size=BATCH, seed=0, progress=False)


@pytest.fixture(scope="module")
def held_out(synthetic):
    return open_dataset(synthetic, "test"), load_attributes(synthetic)


@pytest.fixture(scope="module")
def real_images(held_out):
    """{sample index: real image [3, 64, 64]} of the held-out split."""
    dataset, _ = held_out
    loader = make_loader(dataset, 64, backend="torch", shuffle=False, augment=False, num_workers=0)
    return {int(i): image for batch in loader for i, image in zip(batch.indices, batch.images[64], strict=True)}


def halfway_to_perfect(chance):
    return chance + (1 - chance) / 2


def test_classifier_beats_chance_on_held_out_real_images(trained):
    classifier, report = trained
    chance = chance_accuracy()
    assert set(report.test_accuracy) == set(ATTRIBUTES)
    assert (report.train_images, report.test_images) == (480, 120)
    for name, accuracy in report.test_accuracy.items():
        assert accuracy >= halfway_to_perfect(chance[name]), (name, accuracy)
    assert report.all_correct > 0.3
    assert report.steps == STEPS and report.train_seconds > 0
    assert "shape" in str(report)
    assert not classifier.training


def test_classifier_outputs_and_input_checks(trained):
    classifier, _ = trained
    for side in (64, 128, 48):  # other sizes are resized
        logits = classifier(torch.rand(3, 3, side, side) * 2 - 1)
        assert {name: tuple(v.shape) for name, v in logits.items()} == {
            name: (3, len(values)) for name, values in ATTRIBUTES.items()
        }
    predicted = classifier.predict(torch.zeros(2, 3, 64, 64))
    assert all(v.dtype == torch.long and v.shape == (2,) for v in predicted.values())
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        classifier(torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError, match="multiple of 16"):
        AttributeClassifier(image_size=60)


def test_training_is_deterministic_and_needs_the_synthetic_set(synthetic, tmp_path):
    first, _ = train_attribute_classifier(synthetic, steps=3, batch_size=8, seed=1, progress=False)
    second, _ = train_attribute_classifier(synthetic, steps=3, batch_size=8, seed=1, progress=False)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match=r"attributes\.json"):
        train_attribute_classifier(tmp_path, steps=1, progress=False)
    with pytest.raises(ValueError, match="steps"):
        train_attribute_classifier(synthetic, steps=0, progress=False)


def test_cache_is_written_atomically_and_read_back(trained, synthetic, tmp_path, monkeypatch):
    classifier, report = trained
    calls = []

    def fake_training(folder, **options):
        calls.append(options)
        return classifier, report

    monkeypatch.setattr(classifier_module, "train_attribute_classifier", fake_training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the short-budget classifier is below the "useful" accuracy
        loaded, _ = load_or_train_attribute_classifier(synthetic, tmp_path, steps=STEPS, progress=False)
    assert len(calls) == 1 and loaded is classifier
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [
        classifier_module.classifier_cache_path(synthetic, tmp_path, steps=STEPS).name
    ]  # no temp file left
    assert synthetic.name in files[0].name and files[0].suffix == ".safetensors"

    # the second call reads the cache: no training, same weights and report
    with pytest.warns(UserWarning, match="unreliable"):
        cached, cached_report = load_or_train_attribute_classifier(synthetic, tmp_path, steps=STEPS, progress=False)
    assert len(calls) == 1
    assert cached_report == report
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    for name, logits in classifier(images).items():
        torch.testing.assert_close(cached(images)[name], logits)

    # a damaged cache file is retrained and replaced
    files[0].write_bytes(b"not a safetensors file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_or_train_attribute_classifier(synthetic, tmp_path, steps=STEPS, progress=False)
    assert len(calls) == 2
    load_attribute_classifier(files[0])  # readable again


def test_save_and_load_round_trip(trained, tmp_path):
    classifier, report = trained
    path = tmp_path / "sub" / "classifier.safetensors"
    save_attribute_classifier(classifier, report, path)
    loaded, loaded_report = load_attribute_classifier(path)
    assert loaded_report == report and loaded.attributes == classifier.attributes
    for name, tensor in classifier.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_real_images_score_high_and_equal_the_ceiling(trained, held_out, real_images):
    classifier, report = trained
    dataset, attributes = held_out

    def real(batch):  # the "generator" that draws exactly the image whose caption it was given
        return torch.stack([real_images[i] for i in batch.indices.tolist()])

    result = caption_accuracy(real, dataset, attributes, classifier, batch_size=32)
    ceiling = caption_accuracy_of_real_images(dataset, attributes, classifier, batch_size=32)
    assert isinstance(result, CaptionAccuracy)
    assert result.as_dict() == ceiling.as_dict()
    assert result.count == len(dataset) == 120
    # the classifier's held-out accuracy is exactly this (same images, same centre crop)
    assert result.per_attribute == pytest.approx(report.test_accuracy, abs=0.02)
    assert result.all_correct == pytest.approx(report.all_correct, abs=0.02)
    assert result.overall == pytest.approx(sum(result.per_attribute.values()) / len(ATTRIBUTES))
    assert result.overall > 0.8
    table = str(result)
    assert all(name in table for name in [*ATTRIBUTES, "overall", "all correct", "chance"])
    values = result.as_dict()
    assert set(values) == {*ATTRIBUTES, "overall", "all_correct", "count"} and values["count"] == 120


def test_noise_scores_near_chance(trained, held_out):
    classifier, _ = trained
    dataset, attributes = held_out

    def noise(batch):
        return torch.rand(len(batch), 3, 64, 64) * 2 - 1

    result = caption_accuracy(noise, dataset, attributes, classifier)
    chance = chance_accuracy()
    for name, accuracy in result.per_attribute.items():
        assert accuracy < chance[name] + 0.25, (name, accuracy)
    assert result.all_correct < 0.05
    assert result.overall < 0.45


def test_caption_accuracy_is_deterministic_and_subsamples(trained, held_out):
    classifier, _ = trained
    dataset, attributes = held_out
    seen = []

    def noise(batch):  # draws from torch's global generator: seeded by caption_accuracy
        seen.append(batch.keys)
        return torch.rand(len(batch), 3, 64, 64) * 2 - 1

    first = caption_accuracy(noise, dataset, attributes, classifier, max_samples=50, seed=3, batch_size=16)
    second = caption_accuracy(noise, dataset, attributes, classifier, max_samples=50, seed=3, batch_size=16)
    assert first == second and first.count == 50
    keys = [key for batch in seen[: len(seen) // 2] for key in batch]
    assert len(set(keys)) == 50
    assert len({key.split("/")[0] for key in keys}) > 10  # a random spread of classes, not the first 50 samples
    state = torch.random.get_rng_state()
    caption_accuracy(noise, dataset, attributes, classifier, max_samples=8, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is restored


def test_caption_accuracy_checks_the_generator_output(trained, held_out):
    classifier, _ = trained
    dataset, attributes = held_out
    with pytest.raises(ValueError, match="generate"):
        caption_accuracy(lambda batch: torch.zeros(1, 3, 64, 64), dataset, attributes, classifier)
    for too_few in (0, 1):  # one sample has no other sample to take a wrong caption from
        with pytest.raises(ValueError, match="max_samples must be at least 2"):
            caption_accuracy(lambda batch: batch.images[64], dataset, attributes, classifier, max_samples=too_few)
    with pytest.raises(KeyError, match=r"attributes\.json"):
        caption_accuracy(lambda batch: batch.images[64], dataset, {}, classifier)


# --- Inception Score and FID: the error paths (no Inception weights in the tests) ---------------------------------


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "no-such-inception.pth"
    with pytest.raises(FileNotFoundError, match=r"no-such-inception\.pth"):
        inception_metrics.inception_score([torch.zeros(2, 3, 64, 64)], missing)
    with pytest.raises(FileNotFoundError, match=r"no-such-inception\.pth"):
        inception_metrics.frechet_inception_distance([], [], missing)
    with pytest.raises(FileNotFoundError, match="no Inception weights"):
        inception_metrics.inception_score([], None)


def test_weights_that_are_not_a_plain_state_dict_are_refused(tmp_path):
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # a pickled module: the safe loader refuses it
    with pytest.raises(ValueError, match="not a plain state dict") as error:
        inception_metrics.inception_score([], pickled)
    message = str(error.value)  # one line naming the file and what it must be, not torch's weights_only advice
    assert "\n" not in message and str(pickled) in message and "2015-12-05" in message
    assert "weights_only" not in message and "it holds pickled objects" in message
    text = tmp_path / "text.pth"
    text.write_text("not a weights file\n" * 50)
    with pytest.raises(ValueError, match=r"text\.pth is not a plain state dict .*2015-12-05") as error:
        inception_metrics.inception_score([], text)
    assert "\n" not in str(error.value)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match=r"fc\.weight"):
        inception_metrics.frechet_inception_distance([], [], other)


def test_missing_libraries_say_how_to_install(tmp_path, monkeypatch):
    weights = tmp_path / "inception.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, weights)
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "torchmetrics.image", None)
    monkeypatch.setitem(sys.modules, "torchmetrics.image.fid", None)
    with pytest.raises(ImportError, match=r"pip install 't2ifast\[eval\]'"):
        inception_metrics.inception_score([], weights)
    with pytest.raises(ImportError, match=r"pip install 't2ifast\[eval\]'"):
        inception_metrics.frechet_inception_distance([], [], weights)


def test_inception_metrics_are_exported_lazily():
    import t2ifast.evaluation as evaluation

    assert evaluation.inception_score is inception_metrics.inception_score
    assert evaluation.frechet_inception_distance is inception_metrics.frechet_inception_distance
    with pytest.raises(AttributeError):
        evaluation.no_such_name  # noqa: B018
    with pytest.raises(ValueError, match="feature"):
        inception_metrics.frechet_inception_distance([], [], "unused.pth", feature=100)
