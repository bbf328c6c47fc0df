"""ColBERT late interaction, computed as the checkpoint's own library computes it.

Two checkpoint formats are read, everything from the checkpoint's own files:

- PyLate's: a sentence-transformers folder whose ``modules.json`` lists ``pylate.models.Dense`` projections and
  whose ``config_sentence_transformers.json`` holds ``query_prefix``/``document_prefix`` (tokens inserted after the
  first one), ``query_length``/``document_length`` (counting the prefix), ``do_query_expansion`` (queries padded to
  their length with ``[MASK]``), ``attend_to_expansion_tokens`` and ``skiplist_words`` (document tokens dropped).
- Stanford ColBERT's (colbert-ai): a BERT with a ``linear`` projection and ``artifact.metadata`` holding
  ``query_token_id``/``doc_token_id`` (markers written over a ``". "`` placeholder after ``[CLS]``),
  ``query_maxlen``/``doc_maxlen``, ``attend_to_mask_tokens``, ``mask_punctuation`` and ``dim``.

The backbone is whatever transformers' ``AutoModel`` loads from the folder (BERT, ModernBERT, ...). Token vectors are
projected and L2-normalised; a query keeps every token (its ``[MASK]`` expansions too), a document drops padding
and skiplist tokens; the score is the sum over query tokens of the best dot product over document tokens (MaxSim).
Tests hold this to both libraries' own scores on tiny checkpoints they saved (``../shared/models/colbert-tiny-*``).
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, ConfigError
from ..provenance import environment, hub_snapshot, model_identity, scoring_code
from ..scoring.batching import SUFFIX, bucket_batches, bucket_tokens, fit_width, policy, with_fillers
from ..scoring.models import dtype_name, pick_device, pick_dtype
from ..types import Doc, Query


@dataclass(frozen=True)
class ColBERTFormat:
    """What a checkpoint says about how it encodes (read by ``read_format``)."""

    kind: str  # "pylate" or "stanford"
    query_marker: str
    doc_marker: str
    query_length: int
    doc_length: int
    expansion: bool  # queries padded to query_length with [MASK] tokens, which are scored
    attend_expansion: bool  # the other tokens attend to those [MASK]s
    skiplist: tuple[str, ...]  # document tokens dropped (words; Stanford: also each one's first sub-token)
    projections: tuple[Path, ...] = field(default=())  # weights files holding linear.weight (and a bias)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read as JSON ({e}); is the checkpoint complete?") from None


def _require(cfg: dict, keys: Sequence[str], where: str, need: str) -> None:
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise ConfigError(f"{where} lacks {missing}; {need}")


def _weights(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"{folder} has no model.safetensors or pytorch_model.bin")


def read_format(folder: Path) -> ColBERTFormat:
    """The encoding a ColBERT checkpoint declares, or a one-line refusal naming what is missing."""
    need = "reranker=colbert reads PyLate and Stanford ColBERT checkpoints only"
    if (folder / "modules.json").is_file():
        modules = _json(folder / "modules.json")
        dense = [m for m in modules if str(m.get("type", "")).startswith("pylate.models.Dense")]
        others = [m for m in modules if m not in dense and "Transformer" not in str(m.get("type", ""))]
        if not dense or others:
            kinds = sorted({str(m.get("type")) for m in modules})
            raise ConfigError(f"{folder} is not a PyLate ColBERT checkpoint (modules {kinds}); {need}")
        cfg = _json(folder / "config_sentence_transformers.json")
        keys = ("query_prefix", "document_prefix", "query_length", "document_length", "do_query_expansion")
        _require(cfg, keys, f"{folder}: config_sentence_transformers.json", need)
        projections = []
        for m in dense:
            sub = folder / m.get("path", "")
            dcfg = _json(sub / "config.json")
            act = str(dcfg.get("activation_function", "torch.nn.modules.linear.Identity"))
            if not act.endswith("Identity") or dcfg.get("use_residual"):
                raise ConfigError(f"{sub}: a Dense layer with {act} or a residual is not supported; {need}")
            projections.append(_weights(sub))
        return ColBERTFormat(
            "pylate",
            cfg["query_prefix"],
            cfg["document_prefix"],
            int(cfg["query_length"]),
            int(cfg["document_length"]),
            bool(cfg["do_query_expansion"]),
            bool(cfg.get("attend_to_expansion_tokens", False)),
            tuple(cfg.get("skiplist_words") or ()),
            tuple(projections),
        )
    if (folder / "artifact.metadata").is_file():
        meta = _json(folder / "artifact.metadata")
        keys = ("query_token_id", "doc_token_id", "query_maxlen", "doc_maxlen", "dim")
        _require(meta, keys, f"{folder}: artifact.metadata", need)
        if meta.get("similarity", "cosine") != "cosine" or meta.get("interaction", "colbert") != "colbert":
            raise ConfigError(
                f"{folder}: similarity {meta.get('similarity')!r} / interaction {meta.get('interaction')!r} is "
                "not supported (cosine ColBERT only)"
            )
        return ColBERTFormat(
            "stanford",
            meta["query_token_id"],
            meta["doc_token_id"],
            int(meta["query_maxlen"]),
            int(meta["doc_maxlen"]),
            True,  # colbert-ai always pads queries with [MASK]
            bool(meta.get("attend_to_mask_tokens", False)),
            tuple(string.punctuation) if meta.get("mask_punctuation", True) else (),
            (_weights(folder),),
        )
    raise ConfigError(
        f"{folder} is neither a PyLate checkpoint (modules.json with a pylate Dense) nor a Stanford ColBERT one "
        "(artifact.metadata); for MaxSim over a plain encoder use reranker=maxsim_demo"
    )


def _load_tensor(path: Path, prefix: str = "linear"):
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    found = {k.removeprefix(f"{prefix}."): v for k, v in state.items() if k.startswith(f"{prefix}.")}
    if "weight" not in found:
        raise ConfigError(f"{path} holds no {prefix}.weight: not the projection this format promises")
    return found["weight"], found.get("bias")


class ColBERTReranker:
    """ColBERT MaxSim from a PyLate or Stanford ColBERT checkpoint.

    Args:
        model: a local checkpoint folder, or a Hugging Face id already in the hub cache.
        revision: the hub revision (recorded in the identity).
        device, dtype: as for cross-encoders (fp32 by default).
        batch_size: documents a forward in the throughput mode (``batch_invariant=false``: length-sorted batches
            padded to their longest). The default runs fixed-shape length buckets (``scoring.batching``: rows
            from ``bucket_tokens``, short batches filled with copies), so a document's vectors never depend on the
            others; ``single``: one a forward.

    Raises:
        BackendUnavailableError: the model is not there (offline: pass a local folder).
        ConfigError: a checkpoint this code cannot interpret: refused, never scored approximately.
    """

    pointwise = True

    def __init__(
        self,
        model: str = "colbert-ir/colbertv2.0",
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "fp32",
        batch_size: int = 32,
        batch_invariant: bool | str = True,
    ):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        folder = Path(model).expanduser()
        if not folder.is_dir():
            snap = hub_snapshot(model, revision)
            if snap is None:
                raise BackendUnavailableError(
                    f"could not load ColBERT model {model!r}: not a folder and not in the Hugging Face cache; "
                    "offline, pass a local checkpoint folder"
                )
            folder = snap
        self.format = read_format(folder)
        self.device = pick_device(device)
        self.torch_dtype = pick_dtype(dtype, self.device)
        self.batch_size = int(batch_size)
        self.policy = policy(batch_invariant)
        self.batch_invariant = self.policy != "throughput"
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a Stanford checkpoint's linear.weight is no part of the backbone
        try:
            self.model = AutoModel.from_pretrained(folder, dtype=self.torch_dtype).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise BackendUnavailableError(f"could not load the backbone of {folder} ({e})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        tok, f = self.tokenizer, self.format
        self.markers = [tok.convert_tokens_to_ids(m) for m in (f.query_marker, f.doc_marker)]
        if tok.unk_token_id in self.markers or None in self.markers:
            raise ConfigError(
                f"{folder}: the tokenizer lacks the marker tokens {f.query_marker!r}/{f.doc_marker!r}"
            )
        skip = {tok.convert_tokens_to_ids(w) for w in f.skiplist}
        if f.kind == "stanford":  # colbert-ai also drops each symbol's first word piece
            skip |= {tok.encode(w, add_special_tokens=False)[0] for w in f.skiplist}
        self.skip = torch.tensor(sorted(skip - {tok.unk_token_id}), dtype=torch.long)
        self.projections = []
        for path in f.projections:
            w, b = _load_tensor(path)
            self.projections.append(
                (w.to(self.device, self.torch_dtype), None if b is None else b.to(self.device))
            )
        self.dtype = dtype_name(self.torch_dtype)
        self.name = (
            f"colbert-{folder.name if Path(model).is_dir() else model.rsplit('/', 1)[-1]}-{self.dtype}"
            f"{SUFFIX[self.policy]}"
        )
        self.identity = (
            f"colbert|{f.kind}|{model_identity(str(folder), revision)}|q={f.query_length}|d={f.doc_length}|"
            f"exp={f.expansion}/{f.attend_expansion}|skip={len(skip)}|{self.dtype}|{self.policy}|"
            f"code={scoring_code('rerankers/colbert', 'scoring/batching')}|env={environment(device=self.device)}"
        )

    def document_room(self, query: str) -> int:
        """Document tokens a document encoding holds (``document_length`` less the marker and special tokens)."""
        return self.format.doc_length - int(self._ids([""], False)[0].shape[1])

    def _ids(self, texts: Sequence[str], is_query: bool):
        """Token ids and attention masks as the checkpoint's library builds them."""
        import torch

        tok, f = self.tokenizer, self.format
        length = f.query_length if is_query else f.doc_length
        marker = self.markers[0 if is_query else 1]
        pad = "max_length" if is_query and f.expansion else "longest"
        if f.kind == "pylate":  # the prefix token is inserted after [CLS], within the length
            enc = tok(list(texts), truncation=True, max_length=length - 1, padding=pad, return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
            one = torch.ones_like(ids[:, :1])
            ids = torch.cat([ids[:, :1], one * marker, ids[:, 1:]], dim=1)
            mask = torch.cat([mask[:, :1], one, mask[:, 1:]], dim=1)
        else:  # colbert-ai writes its marker over a ". " placeholder after [CLS]
            enc = tok(
                [". " + t for t in texts],
                truncation=True,
                max_length=length,
                padding=pad,
                return_tensors="pt",
            )
            ids, mask = enc["input_ids"], enc["attention_mask"]
            ids[:, 1] = marker
        if is_query and f.expansion:
            expansion = mask == 0
            ids[expansion] = tok.mask_token_id
            if f.attend_expansion:
                mask[expansion] = 1
            keep = torch.ones_like(ids, dtype=torch.bool)  # every query token is scored, expansions too
        else:
            keep = mask.bool() & ~torch.isin(ids, self.skip)
        return ids, mask, keep

    def _vectors(self, texts: Sequence[str], is_query: bool) -> list[np.ndarray]:
        """Unit token vectors of each text that the checkpoint scores; documents batched by the policy."""
        import torch

        ids, mask, keep = self._ids(texts, is_query)
        out: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * len(texts)
        if is_query:  # a query is scored alone, in one forward of its own shape
            batches = [(np.arange(len(texts)), ids.shape[1], len(texts))]
        else:
            batches = self._batches(mask.sum(dim=1).numpy(), self.format.doc_length)
        for idx, width, rows in batches:
            take = torch.from_numpy(with_fillers(idx, rows))
            b_ids, b_mask = (
                fit_width(ids[take], width, self.tokenizer.pad_token_id),
                fit_width(mask[take], width, 0),
            )
            with torch.inference_mode():
                h = self.model(input_ids=b_ids.to(self.device), attention_mask=b_mask.to(self.device))
                h = h.last_hidden_state
                for w, b in self.projections:
                    h = h @ w.T + (b if b is not None else 0)
                h = torch.nn.functional.normalize(h.float(), p=2, dim=-1).cpu()
            for row, i in enumerate(idx.tolist()):
                out[i] = h[row][fit_width(keep[i][None], width, False)[0]].numpy()
        return out

    def _batches(self, lengths: np.ndarray, cap: int) -> list[tuple[np.ndarray, int, int]]:
        """``(indices, width, rows)`` of each forward: fixed-shape length buckets (the default), one a forward, or
        the throughput mode's length-sorted batches padded to their longest."""
        if self.policy == "invariant":
            return bucket_batches(lengths, bucket_tokens(self.device), cap=cap)
        order = np.argsort(lengths, kind="stable")
        size = 1 if self.policy == "single" else self.batch_size
        return [
            (order[a : a + size], int(lengths[order[a : a + size]].max()), len(order[a : a + size]))
            for a in range(0, len(order), size)
        ]

    def score(self, query: Query, docs: Sequence[Doc]) -> list[float]:
        q = self._vectors([query.text], True)[0]
        return [
            float((q @ d.T).max(axis=1).sum()) if len(d) else 0.0
            for d in self._vectors([d.full_text for d in docs], False)
        ]
