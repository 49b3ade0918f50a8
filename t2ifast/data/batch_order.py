"""Which samples each batch holds: the epoch order cut into shards, and optionally contrast groups.

`EpochBatches` is the batch sampler of the torch loader, and of the DALI loader when contrast groups are asked
for (DALI's own file reader covers the plain case). Both are functions of (seed, epoch, shard): a resumed run
replays the epoch up to where it stopped and continues with the same batches.

Contrast groups: a contrastive loss (the DAMSM's) learns only what tells a caption apart from the others in its
batch. In a random batch of 48 synthetic images a caption almost never has a partner that differs from it only
in shape, so shape is learnt last and slowly. `ContrastGroups` fills part of each batch with groups of samples
that share every attribute but one, each with a different value of that one.
"""

import numpy as np


class ContrastGroups:
    """Draws groups of samples that differ in the attribute `vary` only.

    sample_attributes: one dict per sample (the dataset's order) of categorical attributes; the samples that
    agree on every attribute but `vary` form a pool, and a group is drawn from one pool with a different value of
    `vary` for each member. fraction: the part of each batch filled with groups (the rest is the epoch's order);
    group_size: at most this many members per group (fewer when the pool has fewer values of `vary`).
    """

    def __init__(self, sample_attributes, vary, *, fraction=0.5, group_size=6):
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if group_size < 2:
            raise ValueError(f"group_size must be at least 2 (a group of one contrasts nothing), got {group_size}")
        names = sorted(sample_attributes[0]) if sample_attributes else []
        if vary not in names:
            raise ValueError(f"vary must be one of the samples' attributes {names}, got {vary!r}")
        pools = {}
        for index, attributes in enumerate(sample_attributes):
            rest = tuple(attributes[name] for name in names if name != vary)
            pools.setdefault(rest, {}).setdefault(attributes[vary], []).append(index)
        # only pools with two values or more can form a group
        self._pools = [[np.array(v) for v in by_value.values()] for by_value in pools.values() if len(by_value) > 1]
        if not self._pools:
            raise ValueError(f"no two samples differ in {vary!r} alone: contrast groups cannot be formed")
        self.vary, self.fraction, self.group_size = vary, fraction, group_size

    def grouped_count(self, batch_size):
        """How many samples of a batch of `batch_size` come from groups."""
        return min(batch_size, round(self.fraction * batch_size))

    def draw(self, rng, count):
        """`count` sample indices, group after group (the last one cut short if need be)."""
        chosen = []
        while len(chosen) < count:
            pool = self._pools[rng.integers(len(self._pools))]
            values = rng.permutation(len(pool))[: min(self.group_size, count - len(chosen))]
            chosen += [int(rng.choice(pool[v])) for v in values]
        return chosen


class EpochBatches:
    """This epoch's batches of (sample index, augmentation seed) for this shard.

    Without contrast groups, each epoch's order (a permutation by seed and epoch when `shuffle`) is cut into
    `shard`'s part and then into batches. With them, each batch takes its first samples from that order and the
    rest from `contrast.draw`; an epoch keeps its number of batches, so it uses only the front of its order, and
    every batch is full.
    """

    def __init__(self, num_samples, batch_size, shuffle, seed, shard, drop_last, contrast=None):
        self.num_samples, self.batch_size, self.shuffle, self.seed = num_samples, batch_size, shuffle, seed
        self.shard, self.drop_last, self.contrast = shard, drop_last, contrast
        self.epoch = 0
        self.start = 0  # batches of this epoch already consumed (a resumed run starts mid-epoch)

    def __len__(self):
        size = self.shard[1] - self.shard[0]
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)

    def __iter__(self):
        order = np.arange(self.num_samples)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        mine = order[self.shard[0] : self.shard[1]]
        first, self.start = self.start, 0
        grouped = 0 if self.contrast is None else self.contrast.grouped_count(self.batch_size)
        # the groups' own generator, one per shard: each rank draws different groups
        group_rng = np.random.default_rng([self.seed, self.epoch, self.shard[0], 1])
        ordered = self.batch_size - grouped
        for batch in range(len(self)):
            indices = [int(i) for i in mine[batch * ordered : (batch + 1) * ordered]]
            if grouped:
                # drawn for skipped batches too, so that a resumed epoch continues with the same groups
                indices += self.contrast.draw(group_rng, self.batch_size - len(indices))
            if batch >= first:
                # each sample's crop and flip come from its own generator: (seed, epoch, index)
                yield [(i, (self.seed, self.epoch, i)) for i in indices]
