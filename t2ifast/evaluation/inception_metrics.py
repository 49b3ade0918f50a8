"""Inception Score and FID through torchmetrics (InceptionScore, FrechetInceptionDistance) and torch-fidelity's
TensorFlow-compatible Inception v3, from an Inception weights file the user provides: nothing is downloaded.

Needs the `eval` extra: `pip install 't2ifast[eval]'` (torchmetrics, torch-fidelity; torch-fidelity pulls in a
torchvision, which must be one built for the installed torch). The weights are torch-fidelity's converted
TensorFlow Inception ("weights-inception-2015-12-05-6726825d.pth" from its GitHub releases), a plain state dict:
fetch it once on a machine with internet access and pass its path.

    is_ = inception_score(fake_batches, "weights-inception-2015-12-05-6726825d.pth")   # {"mean", "std", "count"}
    fid = frechet_inception_distance(real_batches, fake_batches, "weights-inception-...pth")  # a float

Batches are [B, 3, H, W] float tensors in [-1, 1] (or uint8 in [0, 255]); they are resized to 299×299 inside the
feature extractor, as torch-fidelity does.
"""

from pathlib import Path

import torch

INSTALL_HINT = "pip install 't2ifast[eval]'"
WEIGHTS_HINT = (
    "torch-fidelity's converted TensorFlow Inception v3 weights (weights-inception-2015-12-05-6726825d.pth from "
    "https://github.com/toshas/torch-fidelity/releases); nothing is downloaded at run time"
)


def require_libraries():
    """The torchmetrics classes, or an ImportError that says how to install them."""
    try:
        import torch_fidelity  # noqa: F401
        from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
        from torchmetrics.image.inception import InceptionScore
    except ImportError as error:
        raise ImportError(
            f"Inception Score and FID need torchmetrics and torch-fidelity ({error}): {INSTALL_HINT}"
        ) from error
    return NoTrainInceptionV3, InceptionScore, FrechetInceptionDistance


def _check_weights(weights_path):
    """The weights file as a Path; FileNotFoundError naming it when it is not there."""
    if weights_path is None:
        raise FileNotFoundError(f"no Inception weights file given: pass the path of {WEIGHTS_HINT}")
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file {str(path)!r} does not exist: pass the path of {WEIGHTS_HINT}")
    return path


def _inception(weights_path, feature):
    path = _check_weights(weights_path)
    # torch-fidelity reads the file with torch.load(weights_only=False), which can run code from a pickle: first
    # make sure it is a plain state dict (the safe loader refuses anything else)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # one line: torch's own message for a pickle holding more than tensors is a page of weights_only advice
        lines = str(error).strip().splitlines()
        if lines and "weights only load failed" in lines[0].lower():
            reason = "it holds pickled objects, not only tensors"
        else:
            reason = f"torch.load cannot read it: {type(error).__name__}" + (f": {lines[0]}" if lines else "")
        raise ValueError(
            f"{path} is not a plain state dict of tensors ({reason[:200]}): it must be the Inception v3 2015-12-05 "
            f"weights file, {WEIGHTS_HINT}"
        ) from None
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise ValueError(f"{path} is not an Inception v3 state dict (no 'fc.weight'); expected {WEIGHTS_HINT}")
    del state
    no_train_inception, inception_score_class, fid_class = require_libraries()
    extractor = no_train_inception(
        name="inception-v3-compat", features_list=[str(feature)], feature_extractor_weights_path=str(path)
    )
    return extractor, inception_score_class, fid_class


def _uint8(images):
    """[B, 3, H, W] uint8 in [0, 255] from float images in [-1, 1] (uint8 images pass through)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be [B, 3, H, W] tensors, got {shape}")
    if images.dtype == torch.uint8:
        return images
    return ((images.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def inception_score(images_iter, weights_path, *, splits=10, device="cpu", seed=0):
    """Inception Score of the images an iterable yields ([B, 3, H, W] in [-1, 1]): {"mean", "std", "count"} over
    `splits` splits (the split assignment is a seeded permutation). Higher is better."""
    extractor, inception_score_class, _ = _inception(weights_path, "logits_unbiased")
    metric = inception_score_class(feature=extractor, splits=splits).to(device)
    count = 0
    for images in images_iter:
        images = _uint8(images).to(device)
        metric.update(images)
        count += images.shape[0]
    if count < splits:
        raise ValueError(f"the Inception Score over {splits} splits needs at least {splits} images, got {count}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"mean": float(mean), "std": float(std), "count": count}


@torch.no_grad()
def frechet_inception_distance(real_iter, fake_iter, weights_path, *, feature=2048, device="cpu"):
    """FID between the images two iterables yield ([B, 3, H, W] in [-1, 1]), on Inception pool features
    (`feature`: 64, 192, 768 or 2048). A float; lower is better. Each side needs at least 2 images (and far more
    than `feature` for a meaningful value)."""
    if int(feature) not in (64, 192, 768, 2048):
        raise ValueError(f"feature must be one of 64, 192, 768, 2048, got {feature}")
    extractor, _, fid_class = _inception(weights_path, int(feature))
    metric = fid_class(feature=extractor).to(device)
    counts = {True: 0, False: 0}
    for real, batches in ((True, real_iter), (False, fake_iter)):
        for images in batches:
            images = _uint8(images).to(device)
            metric.update(images, real=real)
            counts[real] += images.shape[0]
    if min(counts.values()) < 2:
        raise ValueError(f"FID needs at least 2 real and 2 generated images, got {counts[True]} and {counts[False]}")
    return float(metric.compute())
