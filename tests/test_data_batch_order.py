"""Which samples each batch holds: contrast groups (samples differing in one attribute only) through both loaders,
and resuming an epoch mid-way with the same batches."""

import numpy as np
import pytest
from data_testing import requires_dali

from t2ifast.data import ATTRIBUTES, generate_synthetic, load_attributes, make_loader, read_stackgan
from t2ifast.data.batch_order import ContrastGroups, EpochBatches

BACKENDS = ["torch", pytest.param("dali", marks=requires_dali)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = generate_synthetic(tmp_path_factory.mktemp("synthetic"), num_images=300, size=32, seed=3, workers=1)
    dataset = read_stackgan(folder, "train")  # 240 samples
    attributes = load_attributes(folder)
    return dataset, [{name: attributes[key][name] for name in ATTRIBUTES} for key in dataset.keys]


def _random_attributes(count, seed):
    rng = np.random.default_rng(seed)
    return [
        {"shape": int(rng.integers(4)), "colour": int(rng.integers(3)), "size": int(rng.integers(2))}
        for _ in range(count)
    ]


def _groups(indices, group_size):
    return [indices[start : start + group_size] for start in range(0, len(indices), group_size)]


@pytest.mark.parametrize("vary", ["shape", "colour"])
def test_each_group_differs_in_one_attribute_only(vary):
    attributes = _random_attributes(400, seed=1)
    values = len({a[vary] for a in attributes})
    contrast = ContrastGroups(attributes, vary, group_size=values)
    drawn = contrast.draw(np.random.default_rng(0), 10 * values)
    assert len(drawn) == 10 * values
    for group in _groups(drawn, values):
        assert len({attributes[i][vary] for i in group}) == len(group)  # a different value each
        for name in attributes[0]:
            if name != vary:
                assert len({attributes[i][name] for i in group}) == 1, (name, group)
    # many different groups, not one pool over and over
    assert len({tuple(sorted(g)) for g in _groups(drawn, values)}) >= 8


def test_groups_are_at_most_group_size_and_the_last_is_cut_to_the_count():
    attributes = _random_attributes(400, seed=2)
    contrast = ContrastGroups(attributes, "shape", group_size=3)
    drawn = contrast.draw(np.random.default_rng(1), 7)
    assert len(drawn) == 7
    for group in _groups(drawn, 3):
        assert len({attributes[i]["shape"] for i in group}) == len(group)
        assert len({(attributes[i]["colour"], attributes[i]["size"]) for i in group}) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"vary": "texture"}, r"vary must be one of the samples' attributes \['colour', 'shape', 'size'\]"),
        ({"vary": "shape", "fraction": 0.0}, r"fraction must be in \(0, 1\], got 0.0"),
        ({"vary": "shape", "fraction": 1.5}, r"fraction must be in \(0, 1\], got 1.5"),
        ({"vary": "shape", "group_size": 1}, r"group_size must be at least 2"),
    ],
)
def test_bad_contrast_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        ContrastGroups(_random_attributes(50, seed=3), **options)


def test_no_group_can_be_formed_is_an_error():
    attributes = [{"shape": 0, "colour": i} for i in range(5)]  # every sample alone in its pool
    with pytest.raises(ValueError, match="no two samples differ in 'shape' alone"):
        ContrastGroups(attributes, "shape")


def test_epoch_batches_take_the_epoch_order_then_groups():
    attributes = _random_attributes(200, seed=4)
    contrast = ContrastGroups(attributes, "shape", fraction=0.25, group_size=4)
    sampler = EpochBatches(200, 16, True, 7, (0, 200), True, contrast=contrast)
    plain = EpochBatches(200, 16, True, 7, (0, 200), True)
    order = [i for batch in plain for i, _ in batch]
    batches = [[i for i, _ in batch] for batch in sampler]
    assert len(batches) == len(sampler) == 12
    for number, batch in enumerate(batches):
        assert len(batch) == 16
        assert batch[:12] == order[12 * number : 12 * (number + 1)]  # the front of this epoch's permutation
        for group in _groups(batch[12:], 4):
            assert len({attributes[i]["shape"] for i in group}) == 4
    sampler.epoch = 1  # the loader's count: the next epoch has another order and other groups
    second = [[i for i, _ in batch] for batch in sampler]
    assert all(a[:12] != b[:12] and a[12:] != b[12:] for a, b in zip(second, batches, strict=True))


def test_shards_draw_their_own_groups():
    attributes = _random_attributes(200, seed=5)
    contrast = ContrastGroups(attributes, "shape", fraction=0.5, group_size=4)
    shards = [EpochBatches(200, 8, True, 0, (100 * s, 100 * (s + 1)), True, contrast=contrast) for s in range(2)]
    grouped = [[i for batch in shard for i, _ in batch[4:]] for shard in shards]
    assert grouped[0] != grouped[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_loaders_fill_batches_with_contrast_groups(shapes, backend):
    dataset, _ = shapes
    # attributes laid out so that every pool holds all 6 values: each group then has exactly 6 members
    attributes = [{"shape": i % 6, "rest": i // 6} for i in range(len(dataset))]
    contrast = ContrastGroups(attributes, "shape", fraction=0.5, group_size=6)
    options = {"num_workers": 0} if backend == "torch" else {"device": "cpu"}
    loader = make_loader(dataset, 24, backend, sizes=(32,), last_batch="drop", contrast=contrast, seed=2, **options)
    for epoch in range(2):  # the second epoch, too: DALI restarts its external source
        batches = list(loader)
        assert len(batches) == len(loader) == 10, epoch
        for batch in batches:
            assert batch.images[32].shape == (24, 3, 32, 32)
            assert batch.keys == [dataset.keys[i] for i in batch.indices]
            for group in _groups(batch.indices[12:].tolist(), 6):
                assert sorted(attributes[i]["shape"] for i in group) == list(range(6))
                assert len({attributes[i]["rest"] for i in group}) == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_contrast", [False, True])
def test_a_resumed_loader_continues_with_the_same_batches(shapes, backend, with_contrast):
    dataset, attributes = shapes
    contrast = ContrastGroups(attributes, "shape") if with_contrast else None
    options = {"num_workers": 0} if backend == "torch" else {"device": "cpu"}

    def loader():
        return make_loader(
            dataset, 16, backend, sizes=(32,), last_batch="drop", augment=False, contrast=contrast, seed=4, **options
        )

    whole = loader()
    uninterrupted, state = [], None
    for batch in whole:
        uninterrupted.append(batch)
        if len(uninterrupted) == 5:
            state = whole.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(uninterrupted) - 5
    for got, expected in zip(rest, uninterrupted[5:], strict=True):
        assert got.indices.tolist() == expected.indices.tolist()
        assert got.captions.tolist() == expected.captions.tolist()
        np.testing.assert_array_equal(got.images[32].numpy(), expected.images[32].numpy())
