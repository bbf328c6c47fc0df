"""How a local model's inputs are grouped into forwards, and why a score does not depend on what it is scored with.

``batch_invariant`` picks the policy:

- ``true`` (the default): many inputs a forward, each one's score bitwise the same whatever else is scored with
  it, in any order, at any thread count. A BERT-family model in the packed runtime runs **blocks**
  (``pack_blocks``): whole sequences packed into rows of a fixed token count (``block_tokens``, the tail filled
  with padding), so every matrix product of the dense layers has one shape whatever the batch mates, and a token's
  output is its own row of it; attention runs within each sequence, padded only to the sequence's own length
  bucket (``bucket_width``), batched over the sequences of that bucket; the pooler and the classifier run over
  every row of the block (not over a gathered batch whose row count would vary). A model's own forward on padded
  batches (other cross-encoders, the causal-LM and seq2seq rerankers, ColBERT, the MaxSim demo) runs **buckets**
  (``bucket_batches``): every input padded to its own length bucket, every batch exactly ``rows_for(width)`` rows
  (a short batch filled with copies of its first row; rows from ``bucket_tokens``), so each forward's shape depends
  only on the bucket. Two cases stay one a forward: a ColBERT or MaxSim query (scored alone anyway), and a
  bi-encoder that is not a mean-pooled BERT (``SentenceTransformer.encode`` pads to a batch's longest).
- ``single``: one input a forward (the previous default; kept to compare against).
- ``false``: the throughput mode, length-sorted batches under a token budget (``throughput_batches``); scores then
  move with batch composition by float rounding (~1e-7 to 1e-5 in fp32, ~1e-2 in bf16).

Why it holds: a row's result in a matrix product is a dot product over the shared dimension whose blocking and
order a kernel fixes from the shapes, not from the values; with the shapes fixed and the rows independent (dense
layers, layer norms, activations, attention within one sequence whose padded keys are masked to exact zeros), the
same input gives the same bits. Measured on the 2-core AMD EPYC: the mixed-company test
(tests/test_invariance.py: each input scored alone and again shuffled among as many others) is bitwise equal for
every local family in fp32 and bf16, and for the cross-encoder between one and two threads; on 300 DL19 pairs,
blocks of 256, 512 and 1024 tokens gave the same bits too. Breaking it shows what matters: the pooler run over
the gathered first tokens (a row count that varies with the block) moved fp32 scores and made them depend on the
thread count, and buckets without filler rows moved the causal-LM and seq2seq scores. Where it would
not hold: a kernel that picks its algorithm or tile by the number of rows and handles a row tail differently
(a gathered batch of a varying row count, the reason the pooler runs over whole blocks), a split-K reduction
chosen by shape when the shape itself varies, or atomic adds; a GPU's flash attention over variable lengths runs
each sequence in its own thread blocks, so it is per sequence by construction. ``benchmarks/gpu_check.sh`` runs
the same test on a GPU.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

STEP = 32  # length buckets: multiples of 32 tokens
SUFFIX = {"invariant": "", "single": "-single", "throughput": "-batched"}  # what a reranker's name says of it


def policy(batch_invariant) -> str:
    """``invariant`` (true, the default), ``single`` or ``throughput`` (false) from a ``batch_invariant`` value."""
    if batch_invariant in (True, None) or str(batch_invariant).lower() == "true":
        return "invariant"
    if batch_invariant is False or str(batch_invariant).lower() == "false":
        return "throughput"
    if str(batch_invariant).lower() == "single":
        return "single"
    raise ConfigError(
        f"batch_invariant must be true (batched, invariant), single (one input a forward) or false (throughput), "
        f"got {batch_invariant!r}"
    )


def bucket_width(length: int, step: int = STEP) -> int:
    """The padded width of an input of ``length`` tokens: the next multiple of ``step``."""
    return -(-int(length) // step) * step


def bucket_tokens(device: str) -> int:
    """The token budget of one ``buckets`` batch: 1024 on a CPU (8 rows from width 128 up, so a short batch wastes
    at most 7 filler rows), 16384 on a GPU."""
    return 16384 if device.startswith("cuda") else 1024


def rows_for(width: int, budget: int) -> int:
    """Rows of every ``buckets`` batch of this width: the budget's rows rounded down to a multiple of 8, at least 8;
    one row past 512 tokens, where seven filler rows would cost more than batching saves."""
    return budget // width // 8 * 8 or (8 if width <= 512 else 1)


def pack_blocks(lengths: np.ndarray, block_tokens: int) -> list[np.ndarray]:
    """Indices of the sequences in each block, first-fit over the longest first (every length <= block_tokens)."""
    order = np.argsort(-lengths, kind="stable")
    room: list[int] = []
    members: list[list[int]] = []
    for i in order.tolist():
        n = int(lengths[i])
        for b, free in enumerate(room):
            if n <= free:
                room[b] -= n
                members[b].append(i)
                break
        else:
            room.append(block_tokens - n)
            members.append([i])
    return [np.array(m, dtype=np.int64) for m in members]


def bucket_batches(
    lengths: np.ndarray, budget: int, cap: int | None = None, step: int = STEP
) -> list[tuple[np.ndarray, int, int]]:
    """``(indices, width, rows)`` of each ``buckets`` batch: inputs grouped by ``bucket_width`` (at most ``cap``,
    the longest input the model takes), widest first, cut into ``rows_for(width)`` rows (the caller fills a short
    batch to ``rows``)."""
    widths = np.array([min(bucket_width(n, step), cap or 1 << 30) for n in lengths.tolist()], dtype=np.int64)
    out = []
    for width in sorted(set(widths.tolist()), reverse=True):
        members = np.flatnonzero(widths == width)
        rows = rows_for(width, budget)
        out += [(members[a : a + rows], width, rows) for a in range(0, len(members), rows)]
    return out


def fit_width(tensor, width: int, fill):
    """The first ``width`` columns of a right-padded batch (a torch tensor), padded with ``fill`` where it is
    narrower: a tokenizer's batch brought to a bucket's width."""
    import torch

    if tensor.shape[1] >= width:
        return tensor[:, :width]
    pad = torch.full((tensor.shape[0], width - tensor.shape[1]), fill, dtype=tensor.dtype)
    return torch.cat([tensor, pad], dim=1)


def with_fillers(idx: np.ndarray, rows: int) -> np.ndarray:
    """A bucket batch's row indices: ``idx``, then copies of its first to make ``rows`` rows."""
    return np.concatenate([idx, np.repeat(idx[:1], rows - len(idx))])


def sorted_batches(lengths: np.ndarray, single: bool, budget: int, min_fill: float = 0.0) -> list[np.ndarray]:
    """Indices of each forward, longest first, under ``single`` (one a forward) or the throughput mode
    (``throughput_batches``)."""
    order = np.argsort(-lengths, kind="stable")
    if single:
        return [order[i : i + 1] for i in range(len(order))]
    return [order[a:b] for a, b in throughput_batches(lengths[order], budget, min_fill)]


def throughput_batches(
    sorted_lengths: np.ndarray, budget: int, min_fill: float = 0.0
) -> list[tuple[int, int]]:
    """Cut length-sorted (longest first) rows into batches whose padded size stays within the token budget; with
    ``min_fill``, a batch also ends before a row shorter than ``min_fill`` times the batch's padded length."""
    out, start, n = [], 0, len(sorted_lengths)
    while start < n:
        width = int(sorted_lengths[start])
        stop = min(n, start + max(1, budget // max(width, 1)))
        if min_fill:
            stop = start + 1 + int(np.count_nonzero(sorted_lengths[start + 1 : stop] >= min_fill * width))
        out.append((start, stop))
        start = stop
    return out
