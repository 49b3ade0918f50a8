"""AttnGAN's DAMSM text encoder: word embedding -> dropout -> bidirectional LSTM over packed sequences.

The parameter names are those of RNN_ENCODER in the AttnGAN release (`encoder` = the nn.Embedding,
`rnn` = the nn.LSTM), so a released DAMSM text encoder (e.g. ``text_encoder200.pth`` for CUB) loads with
``TextEncoder(len(vocabulary)).load_state_dict(torch.load(path))`` when it was trained with the same sizes
(AttnGAN: 300-d word embeddings, 256-d features = 128 per direction, one layer).
"""

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

EMBEDDING_INIT_RANGE = 0.1  # AttnGAN's RNN_ENCODER.init_weights


def _check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class TextEncoder(nn.Module):
    """DAMSM bi-LSTM text encoder (AttnGAN's RNN_ENCODER).

    Args:
        vocab_size: number of word indices (index 0 = padding, ``t2ifast.data.captions.PAD_INDEX``).
        embedding_dim: size of the word embedding (AttnGAN's ``ninput``, 300).
        hidden_dim: size of the word and sentence features, both directions together (AttnGAN's
            ``nhidden`` = ``TEXT.EMBEDDING_DIM``, 256): each direction has ``hidden_dim // 2`` units.
        num_layers: LSTM layers (1 in AttnGAN).
        dropout: dropout on the word embeddings, and between LSTM layers when there are several.

    ``forward(captions [B, T] long, lengths [B])`` returns ``(words [B, hidden_dim, T], sentence [B, hidden_dim])``:
    the LSTM outputs at every position (exactly zero at the padded positions t >= lengths[b]) and the final
    hidden states of the forward and backward directions (of the last layer) concatenated. The lengths need not
    be sorted.

    State-dict keys: ``encoder.weight`` and ``rnn.weight_ih_l0``, ``rnn.weight_hh_l0``, ``rnn.bias_ih_l0``, ...,
    ``rnn.bias_hh_l0_reverse`` — the same as AttnGAN's RNN_ENCODER, whose released weights therefore load.
    """

    def __init__(self, vocab_size, *, embedding_dim=300, hidden_dim=256, num_layers=1, dropout=0.5):
        super().__init__()
        _check_positive_int("vocab_size", vocab_size)
        _check_positive_int("embedding_dim", embedding_dim)
        _check_positive_int("hidden_dim", hidden_dim, minimum=2)
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (hidden_dim // 2 units per direction), got {hidden_dim}")
        _check_positive_int("num_layers", num_layers)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.vocab_size, self.embedding_dim, self.hidden_dim = vocab_size, embedding_dim, hidden_dim
        self.num_layers = num_layers
        self.encoder = nn.Embedding(vocab_size, embedding_dim)
        self.drop = nn.Dropout(dropout)
        # nn.LSTM's dropout acts between layers only (and warns when there is one layer)
        self.rnn = nn.LSTM(
            embedding_dim,
            hidden_dim // 2,
            num_layers,
            batch_first=True,
            dropout=float(dropout) if num_layers > 1 else 0.0,
            bidirectional=True,
        )
        with torch.no_grad():
            self.encoder.weight.uniform_(-EMBEDDING_INIT_RANGE, EMBEDDING_INIT_RANGE)

    def extra_repr(self):
        return f"vocab_size={self.vocab_size}, embedding_dim={self.embedding_dim}, hidden_dim={self.hidden_dim}"

    def _check_inputs(self, captions, lengths):
        if not isinstance(captions, torch.Tensor):
            raise TypeError(f"captions must be a torch.Tensor [B, T] of word indices, got {type(captions).__name__}")
        if captions.dtype != torch.long:
            raise TypeError(f"captions must be a long (int64) tensor of word indices, got dtype {captions.dtype}")
        if captions.dim() != 2 or captions.shape[0] == 0 or captions.shape[1] == 0:
            raise ValueError(f"captions must be [B, T] with B, T >= 1, got shape {tuple(captions.shape)}")
        batch, steps = captions.shape
        if not isinstance(lengths, torch.Tensor):
            raise TypeError(f"lengths must be a torch.Tensor [B] of caption lengths, got {type(lengths).__name__}")
        if lengths.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"lengths must be an int32 or int64 tensor, got dtype {lengths.dtype}")
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must be [B] = [{batch}], got shape {tuple(lengths.shape)}")
        # one host transfer for every value check (pack_padded_sequence needs the lengths on the CPU anyway)
        values = torch.cat([torch.stack([captions.min(), captions.max()]), lengths.detach().long()]).cpu()
        (lo, hi), host_lengths = values[:2].tolist(), values[2:]
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"captions must hold word indices in [0, {self.vocab_size}), got values in [{lo}, {hi}]")
        if int(host_lengths.min()) < 1 or int(host_lengths.max()) > steps:
            raise ValueError(
                f"lengths must be in [1, T] = [1, {steps}], got values in "
                f"[{int(host_lengths.min())}, {int(host_lengths.max())}]"
            )
        return host_lengths

    def forward(self, captions, lengths):
        """``(words [B, hidden_dim, T], sentence [B, hidden_dim])`` of captions ``[B, T]`` with ``lengths [B]``."""
        host_lengths = self._check_inputs(captions, lengths)
        batch, steps = captions.shape
        embedded = self.drop(self.encoder(captions))
        packed = pack_padded_sequence(embedded, host_lengths, batch_first=True, enforce_sorted=False)
        output, (hidden, _) = self.rnn(packed)
        # pad_packed_sequence puts the samples back in their given order and zeros at the padded positions
        output, _ = pad_packed_sequence(output, batch_first=True, padding_value=0.0, total_length=steps)
        words = output.transpose(1, 2)
        # hidden: [num_layers * 2, B, hidden_dim // 2], last layer's forward then backward direction
        sentence = hidden[-2:].transpose(0, 1).reshape(batch, self.hidden_dim)
        return words, sentence


__all__ = ["TextEncoder"]
