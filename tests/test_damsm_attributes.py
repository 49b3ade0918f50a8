"""attribute_discrimination (t2ifast.evaluation.damsm_attributes): which caption attributes a scorer tells apart
on real images. An oracle that reads only the colour must score 100% on colour and 0% (ties) elsewhere."""

import pytest
import torch

from t2ifast.data import ATTRIBUTES, generate_synthetic, load_attributes, open_dataset
from t2ifast.data.captions import tokenize
from t2ifast.data.synthetic import COLOURS
from t2ifast.evaluation import attribute_discrimination, damsm_score
from t2ifast.evaluation.damsm_attributes import caption_variants
from t2ifast.models.image_encoder import ImageEncoder
from t2ifast.models.text_encoder import TextEncoder

# every colour word of the synthetic captions (synonyms included) -> its colour
COLOUR_OF_WORD = {"violet": "purple", "turquoise": "cyan", **{name: name for name in COLOURS}}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("shapes"), num_images=300, size=64, workers=1)


def drawn_colour(image):
    """The shape colour of a synthetic image [1, 3, S, S] in [-1, 1]: the palette colour most pixels are near."""
    pixels = ((image[0].permute(1, 2, 0) + 1) * 127.5).reshape(-1, 3)
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
    near = (torch.cdist(pixels, palette) < 45).sum(dim=0)
    return list(COLOURS)[int(near.argmax())]


def colour_oracle(image, captions):
    colour = drawn_colour(image)
    named = [next(COLOUR_OF_WORD[w] for w in tokenize(c) if w in COLOUR_OF_WORD) for c in captions]
    return {"oracle": torch.tensor([float(n == colour) for n in named])}


def test_an_oracle_for_one_attribute_scores_all_of_it_and_none_of_the_others(synthetic):
    result = attribute_discrimination(
        colour_oracle, open_dataset(synthetic, "test"), load_attributes(synthetic), max_samples=40
    )
    assert result.count == 40
    assert result.accuracy["oracle"]["colour"] == 1.0
    for attribute in ("shape", "size", "position", "background"):  # the oracle ties every variant: a miss
        assert result.accuracy["oracle"][attribute] == 0.0, attribute
    assert result.chance == {attribute: 1 / len(values) for attribute, values in ATTRIBUTES.items()}
    assert "colour" in str(result) and "100.0%" in str(result)


def test_variants_differ_only_in_their_attribute():
    record = {"shape": "star", "colour": "cyan", "size": "small", "position": "top-left", "background": "brown"}
    for attribute, values in ATTRIBUTES.items():
        captions, truth = caption_variants(record, attribute, [7, 3])
        assert len(set(captions)) == len(values) and truth == values.index(record[attribute])
        assert captions[truth] == caption_variants(record, attribute, [7, 3])[0][truth]  # seeded
        lengths = {len(tokenize(c)) for c in captions}
        assert max(lengths) - min(lengths) <= 3, captions  # a few words swapped, the template kept


def test_damsm_score_runs_and_is_deterministic(synthetic):
    torch.manual_seed(0)
    dataset = open_dataset(synthetic, "train")
    vocabulary = dataset.vocabulary
    text_encoder = TextEncoder(len(vocabulary), embedding_dim=8, hidden_dim=16).eval()
    image_encoder = ImageEncoder(16, input_size=64, width=4).eval()
    score = damsm_score(text_encoder, image_encoder, vocabulary)
    options = {"max_samples": 6, "seed": 3}
    held_out, attributes = open_dataset(synthetic, "test"), load_attributes(synthetic)
    first = attribute_discrimination(score, held_out, attributes, **options)
    second = attribute_discrimination(score, held_out, attributes, **options)
    assert first.as_dict() == second.as_dict() and first.count == 6
    assert set(first.accuracy) == {"sentence", "word"}
    for per_attribute in first.accuracy.values():
        assert set(per_attribute) == set(ATTRIBUTES)
        assert all(v in {k / 6 for k in range(7)} for v in per_attribute.values())


def test_bad_inputs_are_named(synthetic):
    held_out = open_dataset(synthetic, "test")
    with pytest.raises(ValueError, match="at least one named score"):
        attribute_discrimination(lambda image, captions: {}, held_out, load_attributes(synthetic), max_samples=2)
    with pytest.raises(KeyError, match=r"attributes\.json"):
        attribute_discrimination(colour_oracle, held_out, {}, max_samples=2)
