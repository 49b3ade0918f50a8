"""GeneratorEMA: the warmed-up exponential average of a generator's weights and buffers, saved as torch's
AveragedModel saves it."""

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from t2ifast.training.ema import GeneratorEMA


def _generator():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _perturb(model, generator):
    """A fresh random step: every float parameter and buffer moves, num_batches_tracked counts up."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator))
            else:
                tensor.add_(1)


def test_the_average_follows_the_warm_up_formula():
    torch.manual_seed(0)
    generator, random = _generator(), torch.Generator().manual_seed(1)
    ema = GeneratorEMA(generator, decay=0.999)
    expected = None
    for step in range(5):
        _perturb(generator, random)
        ema.update(generator)
        current = {k: v.clone() for k, v in generator.state_dict().items()}
        if expected is None:  # the first update copies
            expected = current
        else:
            decay = min(0.999, (1 + step) / (10 + step))
            expected = {
                k: torch.lerp(v, current[k], 1 - decay) if v.is_floating_point() else current[k]
                for k, v in expected.items()
            }
    for name, value in ema.module.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-6, msg=name)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_state_dict_is_averaged_models_and_loads_both_ways():
    torch.manual_seed(0)
    generator, random = _generator(), torch.Generator().manual_seed(2)
    ema = GeneratorEMA(generator, decay=0.9)
    for _ in range(3):
        _perturb(generator, random)
        ema.update(generator)
    averaged = AveragedModel(_generator(), use_buffers=True)
    averaged.load_state_dict(ema.state_dict())  # strict: same keys as AveragedModel's
    assert list(ema.state_dict()) == list(averaged.state_dict())
    resumed = GeneratorEMA(_generator(), decay=0.9)
    resumed.load_state_dict(averaged.state_dict())
    assert resumed.updates == 3
    _perturb(generator, random)
    ema.update(generator)
    resumed.update(generator)
    for (name, a), (_, b) in zip(ema.module.state_dict().items(), resumed.module.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
