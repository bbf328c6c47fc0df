"""``CrossEncoderEngine``: (query, document) pairs scored by a sequence-classification model. Each unique text
tokenized once (``tokens``), BERT-family models run packed (``runtimes``), any other through its own forward, batches
by the batching policy (``batching``: batched and bitwise batch invariant by default), fp32 by default, fp32 scores
out. Scores equal ``sentence_transformers.CrossEncoder.predict`` on the same pairs (within 1e-5 in fp32)."""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from .batching import (
    bucket_batches,
    bucket_tokens,
    bucket_width,
    pack_blocks,
    policy,
    sorted_batches,
    with_fillers,
)
from .models import declared_max_length, load_error, pick_device, pick_dtype, resolve_model
from .runtimes import _block, _is_plain_bert, _PackedBert, _progress, _to_device
from .tokens import (
    _ascii_tokenizer,
    _find,
    _layout,
    _pad,
    _pair_tokenizer,
    _plain_fast_tokenizer,
    _tokenize,
    _TokenStore,
    _truncation_probes,
    truncate_pairs,
)

log = logging.getLogger("rerank_eval")


# the source files that compute a score: part of every score-cache key
CROSS_ENCODER_CODE = (
    "scoring/cross_encoder",
    "scoring/runtimes",
    "scoring/tokens",
    "scoring/models",
    "scoring/batching",
)


class CrossEncoderEngine:
    """Scores (query, document) pairs with a sequence-classification model.

    BERT-family models (MiniLM, ms-marco cross-encoders) run packed: a batch is one row of all its pairs'
    tokens, so the dense layers compute no padding, and attention runs per pair (flash-attention over variable
    lengths on a GPU where torch has it, else padded attention over the length-sorted batch). Other models run
    through their own Hugging Face forward on padded, length-sorted batches.

    Args:
        model: a Hugging Face id or a local folder.
        max_length: longest pair in tokens (None: what the model declares, see ``declared_max_length``); longer
            pairs are truncated longest-first like the tokenizer does.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        dtype: ``fp32`` (default), ``bf16``, ``fp16`` or ``auto`` (bf16 where the hardware has it).
        batch_invariant: true (default): batched, and a pair's score never depends on what it was scored with
            (``scoring.batching``); ``single``: one pair a forward; false: the throughput mode, packed under
            ``batch_tokens``.
        batch_tokens: the token budget of one throughput batch (rows times padded length); None: 1024 on CPU,
            65536 on CUDA. On CPU a throughput batch
            also ends where the next pair is shorter than 70% of the batch's longest, so little compute goes to
            padded attention (see ``throughput_batches``).
        block_tokens: tokens of one packed block under the invariant default (None: 512 on CPU, 16384 on CUDA; at
            least ``max_length``).
        activation: apply the model's own activation (sigmoid for one label) to the logits.
        chunk_pairs: the most pairs prepared at once; helper threads tokenize and pack the next chunks while
            this one is scored. Chunks grow from 256 pairs, so the model starts early.
        prep_workers: chunks prepared at once (None: 1 on CPU, where the model wants the cores; 4 on CUDA, where
            the tokenizer is the wall: on an H100 host, 4 gave 26,300 pairs/s end to end, 2 gave 20,300-21,300 and
            1 gave 17,700-21,500; benchmarks/pipeline_timing.py).
        compile: ``torch.compile`` the model (worth it for long runs on a GPU; the first batches compile).
        packed: run BERT-family models packed (None: whenever the model is one); False: padded batches.
    """

    def __init__(
        self,
        model: str,
        max_length: int | None = None,
        device: str = "auto",
        dtype: str = "fp32",
        batch_tokens: int | None = None,
        activation: bool = False,
        chunk_pairs: int = 2048,
        compile: bool = False,
        packed: bool | None = None,
        prep_workers: int | None = None,
        batch_invariant: bool | str = True,
        block_tokens: int | None = None,
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = model
        self.path = resolve_model(model)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        cuda = self.device.startswith("cuda")
        self.batch_tokens = int(batch_tokens or (65536 if cuda else 1024))
        self.min_fill = 0.0 if cuda else 0.7  # a GPU pays per kernel launch more than per padded token
        if self.batch_tokens < 64:
            raise ConfigError(f"batch_tokens must be at least 64, got {batch_tokens}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                self.path, dtype=self.dtype, attn_implementation="sdpa"
            )
        except (OSError, ValueError) as e:
            raise load_error(model, e) from e
        self.model.eval().to(self.device)
        if self.model.config.num_labels != 1:
            raise ConfigError(f"{model} has {self.model.config.num_labels} labels; a reranker needs one")
        self.declared_max_length = declared_max_length(self.path, self.tokenizer, self.model.config)
        positions = int(self.model.config.max_position_embeddings)
        if max_length is not None and int(max_length) < 8:
            raise ConfigError(f"max_length must be at least 8 tokens, got {max_length}")
        self.max_length = min(int(max_length), positions) if max_length else self.declared_max_length
        self._policy = policy(batch_invariant)
        self.batch_invariant = self._policy != "throughput"
        self.block_tokens = max(int(block_tokens or (16384 if cuda else 512)), bucket_width(self.max_length))
        self.activation = activation
        self.pad_id = self.tokenizer.pad_token_id or 0
        self._has_types = "token_type_ids" in self.tokenizer.model_input_names
        self._template = self._pair_template()
        self._store = _TokenStore()
        self._fast = _plain_fast_tokenizer(self.tokenizer)
        self._fast_ascii = _ascii_tokenizer(self._fast)
        self._pair_tokenizer = _pair_tokenizer(self.tokenizer, self.max_length)
        self.chunk_pairs = int(chunk_pairs)
        self.prep_workers = int(prep_workers or (4 if cuda else 1))
        self._torch = torch
        can_pack = _is_plain_bert(self.model)
        if packed and not can_pack:
            raise ConfigError(
                f"{model} is not a BERT-family classifier; packed=true needs one (use packed=null)"
            )
        self.packed = can_pack if packed is None else bool(packed)
        self._body = _PackedBert(torch, self.model.bert, self.device, self.dtype) if self.packed else None
        self._forward = self._forward_packed if self.packed else self._forward_padded
        if compile:
            self._forward = torch.compile(self._forward, dynamic=True)
        self.tokenization = self._choose_tokenization()
        if self.packed:
            self._check_packed()

    @property
    def batching(self) -> str:
        """The batching policy that runs: ``blocks``, ``buckets``, ``single`` or ``throughput``."""
        if self._policy == "invariant":
            return "blocks" if self.packed else "buckets"
        return self._policy

    # -- pair construction -------------------------------------------------------------------------------------
    def _pair_template(self):
        """Learn where the tokenizer puts its special tokens around a pair, then check it on a sample."""
        a = self.tokenizer("alpha", add_special_tokens=False)["input_ids"]
        b = self.tokenizer("beta", add_special_tokens=False)["input_ids"]
        enc = self.tokenizer("alpha", "beta")
        ids, types = enc["input_ids"], enc.get("token_type_ids")
        s1 = _find(ids, a, 0)
        s2 = _find(ids, b, s1 + len(a))
        if s1 < 0 or s2 < 0:
            return None
        t = types or [0] * len(ids)
        e1, e2 = s1 + len(a), s2 + len(b)
        return {  # special tokens in order (prefix, middle, suffix) and the type id of every position kind
            "tokens": np.array(ids[:s1] + ids[e1:s2] + ids[e2:], dtype=np.int64),
            "types": np.array(t[:s1] + t[e1:s2] + t[e2:], dtype=np.int64),
            "sizes": (s1, s2 - e1, len(ids) - e2),
            "t1": t[s1],
            "t2": t[s2],
            "has_types": types is not None,
        }

    def _choose_tokenization(self) -> str:
        """``cached`` when pairs built from the per-text token store equal the tokenizer's own pair encoding on
        probe pairs covering every branch of longest-first truncation (either text longer, equal lengths, one or
        both past ``max_length``, odd and even room, non-ASCII), as this tokenizers version cuts them; else
        ``library``: every pair goes through the tokenizer's pair encoding (slower, never refused)."""
        if self._pair_tokenizer is None:
            return "library"
        if self._template is None:
            return "library"
        probes = _truncation_probes(self.max_length)
        got, want = self._pack_cached(probes), self._pack_library(probes)
        self._store.clear()
        if all(np.array_equal(a, b) for a, b in zip(got, want, strict=True)):  # ids, type ids, offsets
            return "cached"
        log.warning(
            "%s: the token cache's pair building differs from this tokenizers version's own pair encoding on a "
            "probe pair; every pair goes through the tokenizer (slower, same scores as predict)",
            self.name,
        )
        return "library"

    def _check_packed(self) -> None:
        """Keep the packed runtime only where it gives the model's own forward's scores on a few probe pairs; else
        run the model's own forward on padded batches, with a note (a model ``CrossEncoder`` loads is never
        refused)."""
        torch = self._torch
        probes = _truncation_probes(self.max_length)[:6]
        ids, types, cu = self.pack(probes)
        lengths = np.diff(cu)
        cu, row, pos = _layout(lengths)
        padded = _pad(ids, types, row, pos, int(lengths.max()), self.pad_id, self._has_types)
        packed = torch.zeros(len(probes))
        dev = functools.partial(_to_device, torch, device=self.device)
        with torch.inference_mode():
            for idx, feed in self._prepare(0, probes):  # the batching that will run (blocks by default)
                packed[idx] = (
                    self._forward_packed(**{k: dev(v) for k, v in feed.items()})[: len(idx)].float().cpu()
                )
            own = self._forward_padded(**{k: dev(v) for k, v in padded.items()})
        self._store.clear()
        packed, own = packed.numpy(), own.float().cpu().numpy()
        worst = float(np.abs(packed - own).max())
        tol = (1e-4 if self.dtype == torch.float32 else 5e-2) * max(1.0, float(np.abs(own).max()))
        if not worst <= tol:
            log.warning(
                "%s: the packed runtime's scores differ from the model's own forward by %.3g on probe pairs; "
                "running the model's own forward instead",
                self.name,
                worst,
            )
            self.packed, self._body, self._forward = False, None, self._forward_padded

    def _token_ids(self, texts: Sequence[str]) -> None:
        """Tokenize the texts not seen before, in batched calls (the Rust tokenizer directly when there is one;
        plain ASCII texts through a copy without BERT's Unicode clean-up, which cannot change them)."""
        new = self._store.missing(texts)
        if new:
            self._store.add(
                new, _tokenize(new, self.tokenizer, self._fast, self._fast_ascii), self.max_length
            )

    def pack(self, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Input ids, token type ids and offsets (``cu[i]:cu[i+1]`` is pair i) of the pairs packed into one row,
        exactly as the tokenizer encodes each pair (special tokens, longest-first truncation)."""
        if self.tokenization == "cached":
            return self._pack_cached(pairs)
        return self._pack_library(pairs)

    def kept_tokens(self, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        """Document tokens of each pair that the model sees (after truncation), and each pair's whole length with
        special tokens: what ``pack`` builds, counted the same way."""
        if self.tokenization == "cached":
            cu = self._pack_cached(pairs)[2]
            _, ql, _, dl, _ = self._store.spans(pairs)
            return self._lengths(ql, dl)[1], np.diff(cu)
        enc = self._pair_tokenizer.encode_batch_fast([tuple(p) for p in pairs])
        doc = np.fromiter((e.sequence_ids.count(1) for e in enc), dtype=np.int64, count=len(enc))
        return doc, np.fromiter((len(e.ids) for e in enc), dtype=np.int64, count=len(enc))

    def _pack_library(self, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``pack`` through the tokenizer's own pair encoding (its Rust backend, ``longest_first`` truncation)."""
        enc = self._pair_tokenizer.encode_batch_fast([tuple(p) for p in pairs])
        lengths = np.fromiter((len(e.ids) for e in enc), dtype=np.int64, count=len(enc))
        total = int(lengths.sum())
        ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in enc), np.int64, total)
        types = np.fromiter(itertools.chain.from_iterable(e.type_ids for e in enc), np.int64, total)
        return ids, types, _layout(lengths)[0]

    def _pack_cached(self, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``pack`` from the per-text token store: each text tokenized once, pairs built from ids."""
        self._token_ids([t for p in pairs for t in p])
        qs, ql, ds, dl, tokens = self._store.spans(pairs)
        n1, n2, lengths = self._lengths(ql, dl)
        cu, row, pos = _layout(lengths)
        return (*self._pack(qs, ds, n1, n2, row, pos, tokens), cu)

    def _lengths(self, ql: np.ndarray, dl: np.ndarray):
        p, m, s = self._template["sizes"]
        n1, n2 = truncate_pairs(ql, dl, self.max_length - p - m - s)
        return n1, n2, p + m + s + n1 + n2

    def _pack(self, qs, ds, n1, n2, row, j, tokens):
        """Ids and type ids of pairs whose query tokens start at ``tokens[qs]`` and document tokens at
        ``tokens[ds]``, truncated to ``n1`` and ``n2`` tokens, packed into one row laid out by ``_layout`` (``row``:
        each token's pair, ``j``: its position within the pair)."""
        t = self._template
        p, m, _ = t["sizes"]
        b2 = p + n1[row]  # end of the query
        b3 = b2 + m  # start of the document
        b4 = b3 + n2[row]  # end of the document
        in_q = (j >= p) & (j < b2)
        in_d = (j >= b3) & (j < b4)
        text_pos = np.where(in_q, qs[row] + j - p, ds[row] + j - b3)
        special = np.where(j < p, j, np.where(j < b3, j - n1[row], j - n1[row] - n2[row]))
        in_text = in_q | in_d
        ids = np.where(in_text, tokens[np.where(in_text, text_pos, 0)], t["tokens"][special * ~in_text])
        types = np.where(in_q, t["t1"], np.where(in_d, t["t2"], t["types"][special * ~in_text]))
        return ids, types

    # -- scoring ------------------------------------------------------------------------------------------------
    def score_pairs(self, pairs: Sequence[tuple[str, str]], progress: bool = False) -> np.ndarray:
        """Scores of (query text, document text) pairs in input order, fp32. Identical pairs are scored once.

        Helper threads tokenize the next chunks of pairs and pack their batches while this one is scored (the
        Rust tokenizer, numpy and the model release the GIL; on CUDA the model also runs asynchronously).
        """
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        torch = self._torch
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        unique = list(dict.fromkeys(pairs))
        where = {p: i for i, p in enumerate(unique)}
        chunks, size, start = [], min(256, self.chunk_pairs), 0
        while start < len(unique):
            chunks.append((start, unique[start : start + size]))
            start += size
            size = min(2 * size, self.chunk_pairs)
        results: list[tuple[np.ndarray, object]] = []  # (row indices into unique, logits on the device)
        bar = _progress(len(unique), progress, f"scoring {self.name}")
        with ThreadPoolExecutor(self.prep_workers) as pool, torch.inference_mode():
            ahead = deque(pool.submit(self._prepare, *c) for c in chunks[: self.prep_workers])
            for k in range(len(chunks)):
                batches = ahead.popleft().result()
                if k + self.prep_workers < len(chunks):
                    ahead.append(pool.submit(self._prepare, *chunks[k + self.prep_workers]))
                for idx, feed in batches:
                    logits = self._forward(**{n: _to_device(torch, v, self.device) for n, v in feed.items()})
                    results.append((idx, logits[: len(idx)]))  # a bucket's filler rows dropped
                    if bar:
                        bar.update(len(idx))
        if bar:
            bar.close()
        logits = torch.cat([r[1] for r in results]).float()
        if self.activation:
            logits = torch.sigmoid(logits)
        scores = np.empty(len(unique), dtype=np.float32)
        scores[np.concatenate([r[0] for r in results])] = logits.cpu().numpy()
        return scores[[where[p] for p in pairs]]

    def _prepare(self, offset: int, chunk: Sequence[tuple[str, str]]) -> list[tuple[np.ndarray, dict]]:
        """Encode a chunk's pairs and cut them into batches of model inputs (numpy) under the batching policy."""
        ids, types, cu = self.pack(chunk)
        lengths = np.diff(cu)
        enc = (ids, types, cu, lengths)
        if self.batching == "blocks":
            return [
                (idx + offset, self._block_feed(*enc, idx)) for idx in pack_blocks(lengths, self.block_tokens)
            ]
        if self.batching == "buckets":
            out = []
            for idx, width, rows in bucket_batches(lengths, bucket_tokens(self.device), self.max_length):
                out.append((idx + offset, self._padded_feed(*enc, with_fillers(idx, rows), width)))
            return out
        cuts = sorted_batches(lengths, self.batching == "single", self.batch_tokens, self.min_fill)
        feed = self._packed_feed if self.packed else self._padded_feed
        return [(idx + offset, feed(*enc, idx, int(lengths[idx[0]]))) for idx in cuts]

    def _packed_feed(self, ids, types, cu, lengths, idx, width: int) -> dict:
        take = np.concatenate([np.arange(cu[i], cu[i + 1]) for i in idx])
        bcu, row, pos = _layout(lengths[idx])  # worked out here: on a GPU it would wait for the device
        return {"tokens": np.stack([ids[take], types[take], row, pos]), "cu": bcu, "width": width}

    def _padded_feed(self, ids, types, cu, lengths, idx, width: int) -> dict:
        take = np.concatenate([np.arange(cu[i], cu[i + 1]) for i in idx])
        _, row, pos = _layout(lengths[idx])
        return _pad(ids[take], types[take], row, pos, width, self.pad_id, self._has_types)

    def _block_feed(self, ids, types, cu, lengths, idx) -> dict:
        feed = self._packed_feed(ids, types, cu, lengths, idx, int(lengths[idx].max()))
        return {**feed, **_block(feed["tokens"], feed["cu"], self.block_tokens, self.pad_id)}

    def _forward_padded(self, input_ids, attention_mask, token_type_ids=None):
        """The model's own forward on a padded batch; logits of the one label."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            feed["token_type_ids"] = token_type_ids
        return self.model(**feed).logits[:, 0]

    def _forward_packed(self, tokens, cu, width: int, cu_all=None, groups=None):
        """A BERT classifier over one packed row (``tokens``: ids, type ids, pair and position of each token):
        the model's own modules and weights, attention within each pair. A block (``groups`` given) runs the
        pooler and classifier over all its rows, so their shapes do not depend on how many pairs it holds."""
        x = self._body(tokens, cu, width, cu_all, groups)
        if groups is None:
            return self.model.classifier(self.model.bert.pooler(x[cu[:-1]][:, None]))[:, 0]
        return self.model.classifier(self.model.bert.pooler(x[:, None]))[:, 0][cu[:-1]]
