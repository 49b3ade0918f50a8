"""R-precision (AttnGAN, Xu et al. 2018): does a generated image retrieve the caption it was generated from?

The protocol, as implemented here:

1. N images are generated, each from one held-out caption (its *true* caption). N = 30,000 in the paper;
   `num_images` here. The captions are walked in a seeded random order over every caption of the held-out
   split; when N exceeds their number the walk starts again with a fresh permutation (a caption then gives
   several images, each with its own noise).
2. Each image gets 100 candidate captions (`candidates`): its true caption plus 99 *negatives* drawn from the
   captions of the same held-out split that belong to OTHER classes (when the dataset has class ids; a sample
   without a class counts as a class of its own), or else to OTHER images. The true caption itself is never a
   negative (`true_index`).
3. The image is encoded by the DAMSM image encoder (its global code; the encoder resizes the image to its input
   size itself: bilinear, antialiased when shrinking, as in DAMSM training), every caption by the DAMSM text
   encoder (its sentence code). The candidates are ranked by cosine similarity with the image code.
4. A hit when the true caption ranks in the top k (R@k; k = 1 in the paper): fewer than k negatives score
   strictly higher than the true caption (a tie goes to the true caption).
5. The N images (in walk order, which is random) are cut into `splits` = 10 contiguous splits (sizes differ by
   at most one when N is not a multiple); R-precision of a split = its fraction of hits; reported: mean and std
   (population std, ddof = 0, as numpy's default) over the splits.

Choices made where the paper is silent (the AttnGAN release never shipped R-precision code):
- negatives are drawn WITHOUT replacement within one image's candidate set (100 distinct captions), uniformly
  over caption rows (so an image with more captions is proportionally likelier), independently per image;
  the later public evaluation code of DM-GAN/ControlGAN drew with replacement, image first then caption;
- negatives come from the held-out split the true captions come from (not the training split);
- captions longer than the model's max_words are truncated to their first max_words words (AttnGAN samples a
  random ordered subset of words in training), the same tokens for the generator and the text encoder;
- every random choice is from an explicitly seeded torch.Generator (CPU): the negatives from `seed` in
  `r_precision`; in `evaluate_r_precision` the caption walk, the generator's noise (torch's global generator,
  forked and restored) and the batches' wrong captions from seeds derived from `seed` (numpy SeedSequence), so
  the same seed gives the same number (on the same device and library versions).

    result = evaluate_r_precision(generate, text_encoder, image_encoder, open_dataset(folder, "test"))
    result.mean, result.std, result.per_split     # R@1 over 10 splits
"""

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from t2ifast.data import Batch
from t2ifast.data.captions import wrong_samples

CHUNK = 1024  # images whose candidate similarities are computed at once ([CHUNK, candidates, D] floats)


@dataclass(frozen=True)
class RPrecision:
    """mean, std: over the splits of the per-split R-precision; per_split: each split's fraction of hits;
    count: images scored; candidates, k: the protocol's settings."""

    mean: float
    std: float
    per_split: tuple
    count: int
    candidates: int
    k: int

    def as_dict(self):
        """A plain dict (per_split as a list), e.g. for JSON."""
        values = asdict(self)
        values["per_split"] = list(self.per_split)
        return values

    def __str__(self):
        return (
            f"R@{self.k} among {self.candidates} candidates: {self.mean:.2%} ± {self.std:.2%} "
            f"({len(self.per_split)} splits of {self.count} images)"
        )


def _index_tensor(name, value, length, length_name):
    value = torch.as_tensor(value)
    if value.dtype in (torch.bool,) or value.is_floating_point() or value.is_complex():
        raise ValueError(f"{name} must be an integer tensor [{length_name}], got dtype {value.dtype}")
    if value.dim() != 1 or value.shape[0] != length:
        raise ValueError(f"{name} must be [{length_name}] = [{length}], got shape {tuple(value.shape)}")
    return value.to("cpu", torch.long)


def _check_int(name, value, low, high=None, high_name=None):
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" + (f" ({high_name})" if high_name else "") if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _uniform_below(bound, generator):
    """One integer uniformly in [0, bound_i) for each bound_i (bound: LongTensor, all >= 1)."""
    draws = torch.rand(bound.shape, generator=generator, dtype=torch.float64)
    return (draws * bound).long().clamp_max(bound - 1)


def _distinct_draws(eligible, count, generator):
    """[N, count] integers, row i `count` distinct values uniformly among the count-subsets of [0, eligible_i).

    Sparse rows (count <= eligible / 2): draw with replacement, then redraw the repeated entries until none is
    left (the result is uniform over subsets: the procedure is symmetric in the values). Dense rows: the count
    smallest of eligible_i random keys. The generator is consumed in a fixed order, so the result is a function
    of its state."""
    rows = eligible.shape[0]
    draws = _uniform_below(eligible[:, None].expand(rows, count).contiguous(), generator)
    if count <= 1:
        return draws
    dense = (2 * count > eligible).nonzero().flatten()
    if len(dense):
        width = int(eligible[dense].max())
        keys = torch.rand(len(dense), width, generator=generator, dtype=torch.float64)
        keys = keys.masked_fill(torch.arange(width)[None, :] >= eligible[dense][:, None], float("inf"))
        draws[dense] = keys.topk(count, dim=1, largest=False).indices
    sparse = torch.ones(rows, dtype=torch.bool)
    sparse[dense] = False
    while True:
        values, order = draws.sort(dim=1, stable=True)
        repeated = torch.zeros_like(draws, dtype=torch.bool)
        repeated[:, 1:] = values[:, 1:] == values[:, :-1]
        repeated = torch.zeros_like(repeated).scatter_(1, order, repeated) & sparse[:, None]
        if not bool(repeated.any()):
            return draws
        which = repeated.nonzero()[:, 0]  # row-major, the order in which draws[repeated] is assigned
        draws[repeated] = _uniform_below(eligible[which], generator)


def draw_negatives(
    num_images, pool_size, negatives, *, pool_classes=None, image_classes=None, true_index=None, generator=None
):
    """The negative captions of each image: a LongTensor [num_images, negatives] of indices into the pool.

    Row i holds `negatives` distinct pool indices drawn uniformly (without replacement) among the eligible ones:
    every pool caption whose class differs from image_classes[i] (when classes are given) and that is not
    true_index[i] (when given). pool_classes [pool_size] and image_classes [num_images] are any integer labels
    (classes, or image ids for "from other images"); when pool_classes is given without image_classes, the
    image's class is pool_classes[true_index]. Without classes nor true_index every pool caption is eligible.
    Deterministic given the generator's state (a CPU torch.Generator; None: torch's global one).

    Raises ValueError (naming the argument) on mismatched shapes and when some image has fewer than `negatives`
    eligible captions (candidates must then be smaller)."""
    num_images = _check_int("num_images", num_images, 1)
    pool_size = _check_int("pool_size", pool_size, 1)
    negatives = _check_int("negatives", negatives, 0)
    if true_index is not None:
        true_index = _index_tensor("true_index", true_index, num_images, "N")
        if bool(((true_index < 0) | (true_index >= pool_size)).any()):
            raise ValueError(f"true_index must index the candidate pool: values in [0, {pool_size})")
    if pool_classes is not None:
        pool_classes = _index_tensor("candidate_classes", pool_classes, pool_size, "P")
        if image_classes is None:
            if true_index is None:
                raise ValueError("image_classes is needed with candidate_classes (or true_index to derive it)")
            image_classes = pool_classes[true_index]
        image_classes = _index_tensor("image_classes", image_classes, num_images, "N")
    elif image_classes is not None:
        raise ValueError("image_classes needs candidate_classes (the classes of the candidate pool)")

    # the pool sorted by class: image i excludes the block [start_i, start_i + length_i) of its class and the
    # sorted position of its true caption when that lies outside the block
    zeros = torch.zeros(num_images, dtype=torch.long)
    if pool_classes is not None:
        order = torch.argsort(pool_classes, stable=True)
        classes, counts = torch.unique(pool_classes, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        block = torch.searchsorted(classes, image_classes).clamp_max(len(classes) - 1)
        found = classes[block] == image_classes
        start, length = torch.where(found, starts[block], zeros), torch.where(found, counts[block], zeros)
    else:
        order, start, length = torch.arange(pool_size), zeros, zeros
    if true_index is not None:
        position = torch.empty_like(order)
        position[order] = torch.arange(pool_size)
        true_position = position[true_index]
        true_length = ((true_position < start) | (true_position >= start + length)).long()
    else:
        true_position, true_length = zeros, zeros
    eligible = pool_size - length - true_length
    short = int(eligible.argmin())
    if int(eligible[short]) < negatives:
        raise ValueError(
            f"candidates must be at most 1 + the eligible captions of every image: {negatives} negatives are "
            f"needed but image {short} has only {int(eligible[short])} captions of other classes/images in the "
            f"pool of {pool_size} (candidate_codes)"
        )
    if negatives == 0:
        return torch.zeros(num_images, 0, dtype=torch.long)
    drawn = _distinct_draws(eligible, negatives, generator)
    # skip the excluded intervals of sorted positions, in ascending order of their starts
    block_first = start <= true_position
    first_start = torch.where(block_first, start, true_position)[:, None]
    first_length = torch.where(block_first, length, true_length)[:, None]
    second_start = torch.where(block_first, true_position, start)[:, None]
    second_length = torch.where(block_first, true_length, length)[:, None]
    drawn = drawn + first_length * (drawn >= first_start)
    drawn = drawn + second_length * (drawn >= second_start)
    return order[drawn]


def _codes(name, value, shape_name):
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {shape_name}, got {type(value).__name__}")
    if value.dim() != 2 or not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point {shape_name} tensor, got {value.dtype} {tuple(value.shape)}")
    return value


def candidate_hits(image_codes, true_codes, candidate_codes, negatives, k=1, *, chunk_size=CHUNK):
    """BoolTensor [N]: whether each image's true caption ranks in the top k of its candidates (itself plus
    candidate_codes[negatives[i]]) by cosine similarity; ties go to the true caption. Computed chunk by chunk
    on the codes' device."""
    device = image_codes.device
    dtype = torch.promote_types(image_codes.dtype, torch.float32)
    count, pool_size = image_codes.shape[0], candidate_codes.shape[0]
    # one bank of every code, so that a chunk's candidates are one index_select (advanced indexing is far slower)
    bank = F.normalize(torch.cat([candidate_codes.to(device, dtype), true_codes.to(device, dtype)]), dim=1)
    negatives = negatives.to(device)
    hits = []
    for begin in range(0, count, chunk_size):
        end = min(begin + chunk_size, count)
        images = F.normalize(image_codes[begin:end].to(dtype), dim=1)
        true = torch.arange(pool_size + begin, pool_size + end, device=device)[:, None]
        rows = torch.cat([true, negatives[begin:end]], dim=1)  # [n, 1 + m]: the true caption first
        candidates = bank.index_select(0, rows.flatten()).view(*rows.shape, -1)
        similarity = torch.bmm(candidates, images[:, :, None])[:, :, 0]
        beaten_by = (similarity[:, 1:] > similarity[:, :1]).sum(dim=1)
        hits.append((beaten_by < k).cpu())
    return torch.cat(hits)


def split_scores(hits, splits):
    """(mean, std, per_split) of the fraction of hits in `splits` contiguous splits (population std)."""
    per_split = torch.stack([part.double().mean() for part in torch.tensor_split(hits.flatten(), splits)])
    return float(per_split.mean()), float(per_split.std(correction=0)), tuple(per_split.tolist())


def r_precision(
    image_codes,
    true_codes,
    candidate_codes,
    candidate_classes=None,
    image_classes=None,
    *,
    true_index=None,
    candidates=100,
    k=1,
    splits=10,
    seed=0,
    chunk_size=CHUNK,
):
    """R-precision of N images from their codes: an RPrecision (mean, std, per_split over `splits` splits).

    Args:
        image_codes: [N, D] the images' global codes (DAMSM image encoder).
        true_codes: [N, D] the sentence codes of the captions the images were generated from.
        candidate_codes: [P, D] the pool the negatives are drawn from (sentence codes).
        candidate_classes: [P] integer class (or group) of each pool caption, or None.
        image_classes: [N] the class of each image (default: candidate_classes[true_index]), or None.
        true_index: [N] the pool index of each image's true caption, never drawn as its negative; or None.
        candidates: true caption + candidates - 1 negatives per image (100 in the paper).
        k: a hit when the true caption is in the top k (R@k).
        splits: contiguous splits of the N images (10 in the paper).
        seed: the negatives are `draw_negatives(..., generator=torch.Generator().manual_seed(seed))`.

    Negatives are drawn without replacement, of other classes than the image's when classes are given; see
    draw_negatives and the module docstring. Raises ValueError naming the argument on bad inputs."""
    image_codes = _codes("image_codes", image_codes, "[N, D]")
    true_codes = _codes("true_codes", true_codes, "[N, D]")
    candidate_codes = _codes("candidate_codes", candidate_codes, "[P, D]")
    count, dim = image_codes.shape
    if count == 0:
        raise ValueError("image_codes must hold at least one image, got shape (0, D)")
    if tuple(true_codes.shape) != (count, dim):
        raise ValueError(
            f"true_codes must be [N, D] = [{count}, {dim}] like image_codes, got {tuple(true_codes.shape)}"
        )
    if candidate_codes.shape[1] != dim or candidate_codes.shape[0] == 0:
        raise ValueError(f"candidate_codes must be [P, D] with D = {dim}, got {tuple(candidate_codes.shape)}")
    candidates = _check_int("candidates", candidates, 2)
    k = _check_int("k", k, 1, candidates, "candidates")
    splits = _check_int("splits", splits, 1, count, "the number of images")
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if candidates - 1 > candidate_codes.shape[0]:
        raise ValueError(
            f"candidates must be at most 1 + the pool size: {candidates} candidates but candidate_codes holds "
            f"{candidate_codes.shape[0]} captions"
        )
    negatives = draw_negatives(
        count,
        candidate_codes.shape[0],
        candidates - 1,
        pool_classes=candidate_classes,
        image_classes=image_classes,
        true_index=true_index,
        generator=torch.Generator().manual_seed(int(seed)),
    )
    hits = candidate_hits(image_codes, true_codes, candidate_codes, negatives, k, chunk_size=chunk_size)
    mean, std, per_split = split_scores(hits, splits)
    return RPrecision(mean, std, per_split, count, candidates, k)


def derived_seed(seed, stream):
    """A 63-bit seed for the `stream`-th independent random stream of an evaluation seeded with `seed`."""
    return int(np.random.SeedSequence([int(seed), int(stream)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def caption_groups(dataset):
    """LongTensor [captions]: the group negatives must avoid, per caption row of dataset.table: the class of its
    sample, or -1 - sample index for a sample without a class (and for every sample of a dataset without
    classes: negatives then come from other images)."""
    samples = torch.arange(len(dataset))
    groups = -1 - samples
    if dataset.class_ids is not None:
        groups = torch.where(dataset.class_ids >= 0, dataset.class_ids.long(), groups)
    return groups.repeat_interleave(dataset.table.captions_per_sample)


def walk_captions(num_captions, num_images, seed):
    """The caption rows images are generated from: seeded random permutations of [0, num_captions), one after
    the other, cut to num_images."""
    generator = torch.Generator().manual_seed(derived_seed(seed, 1))
    rounds = math.ceil(num_images / num_captions)
    return torch.cat([torch.randperm(num_captions, generator=generator) for _ in range(rounds)])[:num_images]


def caption_batch(dataset, rows, max_words, generator):
    """A t2ifast.data.Batch (no images) for these caption rows of dataset.table: captions truncated to
    max_words; wrong captions of random other samples (other classes when the dataset has them)."""
    table = dataset.table
    samples = torch.searchsorted(table.offsets, rows, right=True) - 1
    captions, lengths, mask = table.fixed_length(rows, max_words, None, "truncate")
    wrong = wrong_samples(samples, len(dataset), dataset.class_ids, generator)
    wrong_rows = table.pick(wrong, generator)
    wrong_captions, wrong_lengths, wrong_mask = table.fixed_length(wrong_rows, max_words, None, "truncate")
    embeddings = wrong_embeddings = None
    if dataset.embeddings is not None:
        embeddings = dataset._embedding_rows(samples, rows)
        wrong_embeddings = dataset._embedding_rows(wrong, wrong_rows)
    classes = dataset.class_ids[samples] if dataset.class_ids is not None else torch.full_like(samples, -1)
    return Batch(
        images={},
        captions=captions,
        caption_lengths=lengths,
        caption_mask=mask,
        wrong_captions=wrong_captions,
        wrong_lengths=wrong_lengths,
        wrong_mask=wrong_mask,
        class_ids=classes,
        indices=samples,
        wrong_indices=wrong,
        keys=[dataset.keys[i] for i in samples.tolist()],
        embeddings=embeddings,
        wrong_embeddings=wrong_embeddings,
    )


@torch.no_grad()
def encode_caption_rows(text_encoder, dataset, max_words=18, *, batch_size=256, device="cpu", progress=False):
    """FloatTensor [captions, D] on the CPU: the sentence code of every caption row of dataset.table (truncated
    to max_words). The text encoder is put in eval mode. progress: a tqdm bar (on stderr) over the captions."""
    text_encoder.eval()
    codes = []
    total = len(dataset.table.lengths)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="R-precision: encoding captions", unit="caption", leave=False, dynamic_ncols=True)
    for begin in range(0, total, batch_size):
        rows = torch.arange(begin, min(begin + batch_size, total))
        captions, lengths, _ = dataset.table.fixed_length(rows, max_words, None, "truncate")
        codes.append(text_encoder(captions.to(device), lengths.to(device))[1].float().cpu())
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    return torch.cat(codes)


@torch.no_grad()
def evaluate_r_precision(
    generate,
    text_encoder,
    image_encoder,
    dataset,
    *,
    num_images=30000,
    batch_size=50,
    candidates=100,
    k=1,
    splits=10,
    seed=0,
    device="cpu",
    max_words=18,
    progress=True,
):
    """R-precision of `generate` on the captions of `dataset` (the held-out split). Returns an RPrecision.

    generate(batch) -> images [B, 3, H, W] in [-1, 1], one per caption of the t2ifast.data.Batch it receives (on
    `device`; it carries captions, lengths, masks, class ids, keys and wrong captions, and no images).
    text_encoder: a DAMSM TextEncoder ((captions, lengths) -> (words, sentence)); image_encoder: a DAMSM image
    encoder (images -> (regions, code)); both are moved to `device` and put in eval mode.
    Every caption of the dataset is encoded once (the candidate pool); num_images captions are walked in a
    seeded order (walk_captions), generated from, encoded, and scored by r_precision with the pool's groups
    (caption_groups). torch's global generator is seeded for `generate` (derived from `seed`), then restored.
    progress: tqdm bars (on stderr) over the caption encoding and over the image generation."""
    num_images = _check_int("num_images", num_images, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    text_encoder.to(device)
    image_encoder.to(device).eval()
    pool = encode_caption_rows(text_encoder, dataset, max_words, device=device, progress=progress)
    groups = caption_groups(dataset)
    rows = walk_captions(len(pool), num_images, seed)
    wrong_generator = torch.Generator().manual_seed(derived_seed(seed, 3))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_images, desc="R-precision: generating", unit="image", leave=False, dynamic_ncols=True)
    where = torch.device(device)
    devices = [torch.cuda.current_device() if where.index is None else where.index] if where.type == "cuda" else []
    codes = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derived_seed(seed, 2))
        for begin in range(0, num_images, batch_size):
            batch = caption_batch(dataset, rows[begin : begin + batch_size], max_words, wrong_generator).to(device)
            images = generate(batch)
            if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[:2] != (len(batch), 3):
                shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
                raise ValueError(f"generate(batch) must return [{len(batch)}, 3, H, W] images, got {shape}")
            codes.append(image_encoder(images.to(device).float())[1].float().cpu())
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return r_precision(
        torch.cat(codes),
        pool[rows],
        pool,
        groups,
        groups[rows],
        true_index=rows,
        candidates=candidates,
        k=k,
        splits=splits,
        seed=seed,
    )


__all__ = [
    "RPrecision",
    "candidate_hits",
    "caption_batch",
    "caption_groups",
    "derived_seed",
    "draw_negatives",
    "encode_caption_rows",
    "evaluate_r_precision",
    "r_precision",
    "split_scores",
    "walk_captions",
]
