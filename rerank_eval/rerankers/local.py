"""What the local-model families built on transformers share (``causal_lm``, ``seq2seq``): a model loaded by
Hugging Face id or folder under the cross-encoders' dtype and device policy (``scoring.models.pick_dtype``),
identical inputs scored once, batches by the engine's batching policy (``scoring.batching``: fixed-shape length
buckets by default, so a score never depends on what it was scored with; one input a forward; or the throughput
mode's length-sorted batches under a token budget), padding on the side the family needs, and one progress bar. A
family says how a (query, document) pair becomes token ids and how a padded batch becomes one score per row; see
the README's "Adding a reranker family".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import BackendUnavailableError, ConfigError
from ..provenance import environment, hub_snapshot, model_identity, scoring_code
from ..scoring.batching import SUFFIX, bucket_batches, bucket_tokens, policy, sorted_batches, with_fillers
from ..scoring.models import dtype_name, load_error, pick_device, pick_dtype
from ..scoring.runtimes import _progress
from ..types import Doc, Query

FIELD = re.compile(r"\{(\w+)\}")  # a prompt's fields: {query}, {document}...
_LOADED: dict[tuple, LocalModel] = {}


class LocalModel:
    """A tokenizer and a transformers model (``loader``: ``AutoModelForCausalLM``, ``AutoModelForSeq2SeqLM``...),
    in eval mode on its device, and ``run`` to score token sequences with it.

    Args:
        model: a Hugging Face id (loaded from the hub cache offline) or a local folder.
        loader: the transformers auto class that loads it.
        revision: the hub revision (recorded in ``files``).
        device, dtype: as for cross-encoders (fp32 by default; ``auto``: bf16 where the hardware has it).
        batch_invariant: true (default): fixed-shape length buckets (``scoring.batching``), a score independent of
            its batch mates; ``single``: one input a forward; false: length-sorted batches under ``batch_tokens``
            (faster; scores then move with batch composition by float rounding).
        batch_tokens: the token budget of one padded batch in the throughput mode (rows times width); None: 4096
            on CPU, 65536 on CUDA. The default's buckets take ``scoring.batching.bucket_tokens``.
        padding_side: ``left`` for a decoder read at its last position, ``right`` for an encoder.
        architecture: the suffix the checkpoint's declared architecture must have (``ForCausalLM``...): another
            kind of checkpoint is refused, not scored through a head it was never trained with.
    """

    def __init__(
        self,
        model: str,
        loader,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "fp32",
        batch_invariant: bool | str = True,
        batch_tokens: int | None = None,
        padding_side: str = "left",
        architecture: str = "",
    ):
        from transformers import AutoConfig, AutoTokenizer

        path, self.files = _folder(model, revision)
        try:
            declared = AutoConfig.from_pretrained(path).architectures or []
        except (OSError, ValueError) as e:
            raise load_error(model, e) from e
        if not any(a.endswith(architecture) for a in declared):
            raise ConfigError(
                f"{model} is a {'/'.join(declared) or 'undeclared'} checkpoint, not a *{architecture} one; "
                "choose the reranker family its model card names"
            )
        self.device = pick_device(device)
        self.torch_dtype = pick_dtype(dtype, self.device)
        self.dtype = dtype_name(self.torch_dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = loader.from_pretrained(path, dtype=self.torch_dtype).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise load_error(model, e) from e
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side must be left or right, got {padding_side!r}")
        self.padding_side = padding_side
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        self.policy = policy(batch_invariant)
        self.batch_invariant = self.policy != "throughput"
        cuda = self.device.startswith("cuda")
        self.batch_tokens = int(batch_tokens or (65536 if cuda else 4096))
        self.min_fill = 0.0 if cuda else 0.7

    def encode(self, texts: Sequence[str], **kwargs) -> dict[str, list[int]]:
        """Token ids of each distinct text, in one batched tokenizer call (``kwargs`` go to the tokenizer)."""
        unique = list(dict.fromkeys(texts))
        if not unique:
            return {}
        ids = self.tokenizer(unique, **kwargs)["input_ids"]
        return dict(zip(unique, ids, strict=True))

    def run(
        self,
        inputs: Sequence[Sequence[int]],
        forward: Callable,
        progress: bool = False,
        desc: str = "scoring",
    ) -> np.ndarray:
        """One fp32 score per input sequence, in input order: ``forward(input_ids, attention_mask)`` gets a padded
        batch on the device and returns one score per row. Identical sequences are scored once."""
        import torch

        if not inputs:
            return np.zeros(0, dtype=np.float32)
        unique = list(dict.fromkeys(tuple(s) for s in inputs))
        lengths = np.fromiter((len(s) for s in unique), dtype=np.int64, count=len(unique))
        scores = np.empty(len(unique), dtype=np.float32)
        bar = _progress(len(unique), progress, desc)
        with torch.inference_mode():
            for idx, width, rows in self._batches(lengths):
                filled = with_fillers(idx, rows)
                ids = np.full((rows, width), self.pad_id, dtype=np.int64)
                mask = np.zeros((rows, width), dtype=np.int64)
                for row, i in enumerate(filled):
                    n = int(lengths[i])
                    cols = slice(width - n, width) if self.padding_side == "left" else slice(0, n)
                    ids[row, cols] = unique[i]
                    mask[row, cols] = 1
                out = forward(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device))
                scores[idx] = out[: len(idx)].float().cpu().numpy()
                if bar:
                    bar.update(len(idx))
        if bar:
            bar.close()
        where = {s: i for i, s in enumerate(unique)}
        return scores[[where[tuple(s)] for s in inputs]]

    @property
    def batching(self) -> str:
        """``buckets`` (the invariant default), ``single`` or ``throughput``."""
        return "buckets" if self.policy == "invariant" else self.policy

    def _batches(self, lengths: np.ndarray) -> list[tuple[np.ndarray, int, int]]:
        """``(indices, width, rows)`` of each forward under the batching policy."""
        if self.policy == "invariant":
            return bucket_batches(lengths, bucket_tokens(self.device))
        cuts = sorted_batches(lengths, self.policy == "single", self.batch_tokens, self.min_fill)
        return [(idx, int(lengths[idx[0]]), len(idx)) for idx in cuts]


def shared_model(
    model: str,
    loader,
    revision: str | None,
    device: str,
    dtype: str,
    batch_invariant: bool,
    batch_tokens: int | None,
    padding_side: str,
    architecture: str,
) -> LocalModel:
    """One loaded ``LocalModel`` per setting and process: the jobs of a sweep share it. The model's files' hash
    is part of the key, so a model rewritten in place is loaded again."""
    args = (model, loader, revision, device, dtype, batch_invariant, batch_tokens, padding_side, architecture)
    key = (*args, _folder(model, revision)[1])
    if key not in _LOADED:
        _LOADED[key] = LocalModel(*args)
    return _LOADED[key]


class AnswerReranker:
    """What the families that read an answer token's logits share: a subclass sets ``lm`` and implements
    ``pair_ids(pairs)`` and ``_forward(input_ids, attention_mask)``, then calls ``_describe``."""

    pointwise = True

    def _describe(self, family: str, prefix: str, model: str, recipe: str, score: str, module: str) -> None:
        """Name, identity (the score cache's key: files, prompt, score, length, dtype, batching, code) and
        settings of a reranker whose prompt is ``recipe``."""
        lm = self.lm
        self.dtype, self.device, self.batch_invariant = lm.dtype, lm.device, lm.batch_invariant
        self.name = f"{prefix}-{model.rstrip('/').rsplit('/', 1)[-1]}-{self.dtype}{SUFFIX[lm.policy]}"
        self.identity = (
            f"{family}|{lm.files}|prompt={hashlib.sha256(recipe.encode()).hexdigest()[:12]}|{score}"
            f"|len={self.max_length}|{self.dtype}|{lm.batching}"
            f"|code={scoring_code(module, 'rerankers/local', 'scoring/models', 'scoring/batching')}"
            f"|env={environment(device=lm.device)}"
        )
        self.settings = {
            "max_length": self.max_length,
            "dtype": self.dtype,
            "score": score,
            "batching": lm.batching,
        }

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    def document_room(self, query: str) -> int:
        """Document tokens a prompt with ``query`` holds before its cut (``max_length`` less the prompt with an
        empty document)."""
        return self.max_length - len(self.pair_ids([(query, "")])[0])

    def score(self, query: Query, docs: Sequence[Doc]) -> list[float]:
        ids = self.pair_ids([(query.text, d.full_text) for d in docs])
        return self.lm.run(ids, self._forward).tolist()


def _folder(model: str, revision: str | None) -> tuple[str, str]:
    """What to load (a local folder as given, else the hub cache's snapshot of the id, which offline must be
    there) and the model's identity (``provenance.model_identity``: its files' hash, and a hub id's commit)."""
    from pathlib import Path

    p = Path(model).expanduser()
    if p.is_dir():
        return str(p.resolve()), model_identity(str(p.resolve()))
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise BackendUnavailableError(
            f"model path {model} does not exist; pass a model folder or a Hugging Face id"
        )
    snap = hub_snapshot(model, revision)
    return (str(snap) if snap is not None else model), model_identity(model, revision)


SCORES = ("log_odds", "yes_logit")


def yes_no_score(logits, yes: int, no: int, score: str):
    """A pair's score from the logits of the token that answers: ``log_odds`` is log p(yes) - log p(no) (the
    recipes' p(yes | yes or no) is its sigmoid, and ranks the same without saturating to ties at 1.0);
    ``yes_logit`` is the yes logit alone (bge-reranker-v2-gemma's recipe)."""
    logits = logits.float()
    return logits[:, yes] - logits[:, no] if score == "log_odds" else logits[:, yes]


def check_score(score: str, what: str) -> str:
    if score not in SCORES:
        raise ConfigError(f"{what}: score must be one of {', '.join(SCORES)}, got {score!r}")
    return score


def fill(template: str, **values: str) -> str:
    """``template`` with each ``{field}`` replaced in one pass (braces inside the values stay as they are)."""
    return FIELD.sub(lambda m: values[m[1]], template)


def answers(lm: LocalModel, tokens: Sequence[str], what: str) -> tuple[int, int]:
    """The vocabulary ids of the positive and the negative answer (vocabulary entries such as ``yes`` or
    ``▁true``), or a one-line refusal."""
    if isinstance(tokens, str) or len(tokens) != 2:
        raise ConfigError(f"{what}: answer_tokens is a pair [positive, negative], got {tokens!r}")
    ids = []
    for token in tokens:
        tid = lm.tokenizer.convert_tokens_to_ids(token)
        if tid is None or (tid == lm.tokenizer.unk_token_id and token != lm.tokenizer.unk_token):
            raise ConfigError(f"{what}: the tokenizer has no token {token!r}; name a vocabulary entry")
        ids.append(int(tid))
    return ids[0], ids[1]
