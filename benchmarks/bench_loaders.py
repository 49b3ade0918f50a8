"""Images per second of the DALI loader against the torch.utils.data fallback, one epoch per round, on the
synthetic set at 64, 128 and 256 pixels and with all three outputs at once (AttnGAN's three stages).

On a GPU the DALI loader decodes on it ("mixed") and the fallback's batches are copied to it, so both deliver
GPU tensors. Without one (the CI smoke run) both run on the CPU over a small set.
"""

import os

import pytest
import torch
from harness import ON_GPU, SMOKE, measure

from t2ifast.data import dali_available, generate_synthetic, make_loader, read_stackgan

NUM_IMAGES = 64 if SMOKE else 4096
BATCH_SIZE = 16 if SMOKE else 64
CASES = {"64": (64,), "128": (128,), "256": (256,), "64+128+256": (64, 128, 256)}
LOADERS = ["torch", pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="DALI not installed"))]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


def _epoch(loader):
    """Run one epoch; the images of each batch end on the GPU when there is one."""

    def run():
        count = 0
        for batch in loader:
            if ON_GPU:
                images = [image.to("cuda", non_blocking=True) for image in batch.images.values()]
                count += len(images[0])
            else:
                count += len(batch)
        return count

    return run


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", LOADERS)
def test_loader_images_per_second(benchmark, synthetic_root, backend, case):
    sizes = CASES[case]
    folder = generate_synthetic(synthetic_root, num_images=NUM_IMAGES, size=max(sizes), seed=0)
    dataset = read_stackgan(folder, "train")
    workers = min(os.cpu_count() or 1, 8)
    options = {"num_workers": workers} if backend == "torch" else {"num_threads": workers}
    loader = make_loader(dataset, BATCH_SIZE, backend, sizes=sizes, augment=True, last_batch="drop", **options)
    benchmark.group = f"loader epoch, {case} px"
    count = measure(benchmark, _epoch(loader), rounds=3, warmup=1)
    assert count == len(loader) * BATCH_SIZE
    if not benchmark.disabled:
        benchmark.extra_info["images/s"] = count / benchmark.stats.stats.median
    benchmark.extra_info["images"] = count
    benchmark.extra_info["decode"] = "gpu (mixed)" if backend == "dali" and torch.cuda.is_available() else "cpu"
