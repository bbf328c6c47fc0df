"""``BiEncoder``: a sentence-transformers bi-encoder, unit vectors out. A BERT body with mean pooling runs packed
like the cross-encoder (fixed-size blocks under the batch-invariant default); its vectors equal
``SentenceTransformer.encode`` (within 1e-5 in fp32). Any other model goes through ``encode``."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence

import numpy as np

from ..provenance import environment, model_identity
from .batching import bucket_width, pack_blocks, policy, sorted_batches
from .models import dtype_name, load_error, pick_device, pick_dtype, resolve_model
from .runtimes import _block, _mean_pooled_bert, _PackedBert, _progress, _to_device
from .tokens import _ascii_tokenizer, _layout, _plain_fast_tokenizer, _tokenize, _truncation_probes

log = logging.getLogger("rerank_eval")

# the source files that compute a vector: part of every cache key that holds one
BI_ENCODER_CODE = (
    "scoring/bi_encoder",
    "scoring/runtimes",
    "scoring/tokens",
    "scoring/models",
    "scoring/batching",
)
_BI_ENCODERS: dict[tuple, BiEncoder] = {}


def shared_bi_encoder(
    model: str,
    device: str = "auto",
    dtype: str = "fp32",
    batch_size: int = 128,
    max_length: int | None = None,
    batch_invariant: bool | str = True,
) -> BiEncoder:
    """One loaded bi-encoder per setting and process: the dense first stage and the bi-encoder reranker of a
    sweep's jobs share it."""
    key = (
        model,
        model_identity(resolve_model(model)),
        device,
        dtype,
        batch_size,
        max_length,
        batch_invariant,
    )
    if key not in _BI_ENCODERS:
        _BI_ENCODERS[key] = BiEncoder(
            model,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            max_length=max_length,
            batch_invariant=batch_invariant,
        )
    return _BI_ENCODERS[key]


class BiEncoder:
    """A sentence-transformers bi-encoder, fp32 by default, unit vectors out.

    A BERT body with mean pooling (all-MiniLM-L6-v2 and its kind) runs packed like ``CrossEncoderEngine``: texts
    tokenized in one call, batches of packed tokens under a token budget, attention per text; its vectors equal
    ``SentenceTransformer.encode`` (within 1e-5 in fp32). Any other model goes through ``encode`` with
    length-sorted batches.

    Args:
        model: a Hugging Face id or a local folder (``sentence-transformers/all-MiniLM-L6-v2`` loads offline).
        device, dtype: as for ``CrossEncoderEngine``.
        batch_size: texts per batch of a model that does not run packed.
        max_length: longest input in tokens (None keeps the model's own).
        batch_tokens: the token budget of one packed batch (None: 1024 on CPU, 65536 on CUDA).
        batch_invariant: true (default): batched, and a vector never depends on the texts encoded with it (a model
            that does not run packed encodes one text a forward, as the library pads to a batch's longest);
            ``single``: one text a forward; false: the throughput mode.
    """

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "fp32",
        batch_size: int = 128,
        max_length: int | None = None,
        batch_tokens: int | None = None,
        batch_invariant: bool | str = True,
    ):
        import torch
        from sentence_transformers import SentenceTransformer

        self.name = model
        self.path = resolve_model(model)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.batch_size = int(batch_size)
        try:
            self.model = SentenceTransformer(
                self.path, device=self.device, model_kwargs={"dtype": self.dtype}
            )
        except (OSError, ValueError) as e:
            raise load_error(model, e) from e
        if max_length:
            self.model.max_seq_length = int(max_length)
        self._policy = policy(batch_invariant)
        self.batch_invariant = self._policy != "throughput"
        self.dtype_name = dtype_name(self.dtype)
        cuda = self.device.startswith("cuda")
        self.batch_tokens = int(batch_tokens or (65536 if cuda else 1024))
        self.block_tokens = max(16384 if cuda else 512, bucket_width(self.model.max_seq_length))
        self.min_fill = 0.0 if cuda else 0.7
        bert = _mean_pooled_bert(self.model)
        self._body = _PackedBert(torch, bert, self.device, self.dtype) if bert is not None else None
        if self._body is not None:
            tok = self.model.tokenizer
            self._fast = _plain_fast_tokenizer(tok)
            self._fast_ascii = _ascii_tokenizer(self._fast)
            self._cls, self._sep = tok("alpha")["input_ids"][0], tok("alpha")["input_ids"][-1]
            self._pad = tok.pad_token_id or 0
            self._check_packed()
        self.identity = (
            f"{self.name}|{model_identity(self.path)}|{dtype_name(self.dtype)}|len={self.model.max_seq_length}"
            f"|{self.batching}|{'packed' if self._body else 'library'}|env={environment(device=self.device)}"
        )

    @property
    def batching(self) -> str:
        """``blocks`` (packed, invariant), ``single`` (one text a forward: also a library model's invariant mode),
        or ``throughput``."""
        if self._policy == "invariant":
            return "blocks" if self._body is not None else "single"
        return self._policy

    def _check_packed(self) -> None:
        """Keep the packed runtime only where its vectors equal ``SentenceTransformer.encode``'s on probe texts
        (one a forward); else encode through the library, with a note."""
        probes = [a for pair in _truncation_probes(self.model.max_seq_length)[:6] for a in pair]
        packed = self._encode_packed(probes, False)
        own = self.model.encode(probes, batch_size=1, normalize_embeddings=True, convert_to_numpy=True)
        worst = float(np.abs(packed - own).max())
        if not worst <= (1e-4 if self.dtype_name == "fp32" else 5e-2):
            log.warning(
                "%s: the packed runtime's vectors differ from SentenceTransformer.encode by %.3g on probe texts; "
                "encoding through the library instead",
                self.name,
                worst,
            )
            self._body = None

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Unit-length fp32 embeddings of the texts, in input order."""
        show = progress and not os.environ.get("RERANK_EVAL_NO_PROGRESS")
        if self._body is None:
            emb = self.model.encode(
                list(texts),
                batch_size=1
                if self.batch_invariant
                else self.batch_size,  # the library pads to a batch's longest
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show,
            )
            return np.asarray(emb, dtype=np.float32)
        return self._encode_packed([t.strip() for t in texts], show)

    def _cuts(self, lengths: np.ndarray) -> list[np.ndarray]:
        """The texts of each forward under the batching policy."""
        if self.batching == "blocks":
            return pack_blocks(lengths, self.block_tokens)
        return sorted_batches(lengths, self.batching == "single", self.batch_tokens, self.min_fill)

    def _encode_packed(self, texts: list[str], progress: bool) -> np.ndarray:
        import torch

        keep = self.model.max_seq_length - 2
        ids = [i[:keep] for i in _tokenize(texts, self.model.tokenizer, self._fast, self._fast_ascii)]
        lengths = np.fromiter((len(i) + 2 for i in ids), dtype=np.int64, count=len(ids))
        out = np.zeros((len(texts), self._body.bert.config.hidden_size), dtype=np.float32)
        bar = _progress(len(texts), progress, f"encoding {self.name}", unit="text")
        with torch.inference_mode():
            for idx in self._cuts(lengths):
                flat = np.fromiter(
                    itertools.chain.from_iterable([self._cls, *ids[i], self._sep] for i in idx),
                    dtype=np.int64,
                    count=int(lengths[idx].sum()),
                )
                cu, row, pos = _layout(lengths[idx])
                feed = {"tokens": np.stack([flat, np.zeros_like(flat), row, pos]), "cu": cu}
                feed["width"] = int(lengths[idx].max())
                if self.batching == "blocks":
                    feed.update(_block(feed["tokens"], cu, self.block_tokens, self._pad))
                feed = {k: _to_device(torch, v, self.device) for k, v in feed.items()}
                x = self._body(**feed)
                sums = torch.zeros(len(idx) + 1, x.shape[1], dtype=torch.float32, device=x.device)
                sums.index_add_(
                    0, feed["tokens"][2], x.float()
                )  # a block's padding adds to the extra last row
                mean = sums[:-1] / torch.from_numpy(lengths[idx]).to(x.device)[:, None]
                out[idx] = torch.nn.functional.normalize(mean, dim=-1).cpu().numpy()
                if bar:
                    bar.update(len(idx))
        if bar:
            bar.close()
        return out
