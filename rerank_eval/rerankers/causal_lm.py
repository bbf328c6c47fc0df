"""LLM rerankers that answer yes or no (Qwen3-Reranker, bge-reranker-v2-gemma): a pair's score is read from a
causal LM's logits for the next token after a prompt, as the model card's recipe builds it.

The prompt is a list of segments (``conf/reranker/causal_lm.yaml``: Qwen3-Reranker's; ``causal_lm_gemma.yaml``:
bge-reranker-v2-gemma's). Each segment is tokenized on its own, without special tokens, exactly as the recipes
tokenize their prefix, body and suffix apart (token boundaries at a segment's edge are the recipe's), then joined,
after the tokenizer's BOS token when ``bos`` is set. ``{query}``, ``{document}`` and ``{instruction}`` are filled
in. A segment's ``max_tokens`` keeps its first tokens; then, when the segments ``counted`` in the budget (and the
BOS token) exceed ``max_length``, the segment holding ``{document}`` loses its last tokens until they fit: the rule
of Qwen's recipe (the whole prompt within ``max_length``) and of bge's (query and passage within ``max_length``,
the closing prompt added after, uncounted).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from ..errors import ConfigError
from .local import FIELD, AnswerReranker, answers, check_score, fill, shared_model, yes_no_score


@dataclass(frozen=True)
class Segment:
    text: str
    max_tokens: int | None = None  # keep this many of its first tokens
    counted: bool = True  # part of max_length's budget


def segments(prompt: Sequence, what: str) -> list[Segment]:
    """The prompt's segments (each a string or a mapping of ``Segment``'s fields), checked: only known fields,
    one segment holding the document and at least one the query."""
    out = []
    for s in prompt:
        if isinstance(s, str):
            s = {"text": s}
        if not isinstance(s, Mapping) or "text" not in s or set(s) - {"text", "max_tokens", "counted"}:
            raise ConfigError(
                f"{what}: a prompt segment is a string or {{text, max_tokens, counted}}, got {s!r}"
            )
        seg = Segment(str(s["text"]), s.get("max_tokens"), bool(s.get("counted", True)))
        unknown = set(FIELD.findall(seg.text)) - {"query", "document", "instruction"}
        if unknown:
            raise ConfigError(
                f"{what}: unknown fields {sorted(unknown)} in a prompt segment; use {{query}}, "
                "{document} and {instruction}"
            )
        out.append(seg)
    holding = [i for i, s in enumerate(out) if "{document}" in s.text]
    if len(holding) != 1 or not any("{query}" in s.text for s in out):
        raise ConfigError(f"{what}: the prompt needs {{query}} in a segment and {{document}} in exactly one")
    return out


class CausalLMReranker(AnswerReranker):
    """Scores each (query, title + text) pair by a causal LM's yes/no answer.

    Args:
        model: a Hugging Face id (``Qwen/Qwen3-Reranker-0.6B``, ``BAAI/bge-reranker-v2-gemma``) or a local folder.
        prompt: the segments (see the module docstring).
        instruction: what ``{instruction}`` stands for.
        answer_tokens: the two vocabulary entries whose logits answer, the positive one first.
        score: ``log_odds`` (log p(yes) - log p(no)) or ``yes_logit``.
        bos: put the tokenizer's BOS token first.
        max_length: the budget of the counted segments, in tokens.
        revision, device, dtype, batch_invariant, batch_tokens: see ``local.LocalModel``.
    """

    def __init__(
        self,
        model: str,
        prompt: Sequence,
        instruction: str = "",
        answer_tokens: Sequence[str] = ("yes", "no"),
        score: str = "log_odds",
        bos: bool = False,
        max_length: int = 8192,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "fp32",
        batch_invariant: bool = True,
        batch_tokens: int | None = None,
    ):
        from transformers import AutoModelForCausalLM

        what = "reranker=causal_lm"
        self.segments = segments(prompt, what)
        self.instruction, self.score_mode, self.bos = str(instruction), check_score(score, what), bool(bos)
        self.max_length = int(max_length)
        fixed = sum(1 for s in self.segments if s.counted and "{document}" not in s.text)
        if self.max_length < fixed + 2:
            raise ConfigError(f"{what}: max_length={max_length} leaves no room for the document")
        self.lm = lm = shared_model(
            model,
            AutoModelForCausalLM,
            revision,
            device,
            dtype,
            batch_invariant,
            batch_tokens,
            "left",
            "ForCausalLM",
        )
        self.yes, self.no = answers(lm, answer_tokens, what)
        if self.bos and lm.tokenizer.bos_token_id is None:
            raise ConfigError(f"{what}: bos=true but {model}'s tokenizer has no BOS token")
        recipe = json.dumps(
            [[asdict(s) for s in self.segments], self.instruction, self.bos, list(answer_tokens)],
            sort_keys=True,
        )
        self._describe("causal-lm", "lm", model, recipe, score, "rerankers/causal_lm")

    def pair_ids(self, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
        """The prompt's token ids for each (query, document) pair."""
        texts = [
            [fill(s.text, query=q, document=d, instruction=self.instruction) for s in self.segments]
            for q, d in pairs
        ]
        ids = self.lm.encode([t for row in texts for t in row], add_special_tokens=False)
        doc = next(i for i, s in enumerate(self.segments) if "{document}" in s.text)
        head = [self.lm.tokenizer.bos_token_id] if self.bos else []
        out = []
        for row in texts:
            parts = [ids[t][: s.max_tokens] for t, s in zip(row, self.segments, strict=True)]
            over = len(head) + sum(len(p) for p, s in zip(parts, self.segments, strict=True) if s.counted)
            over -= self.max_length
            if over > 0:
                parts[doc] = parts[doc][: max(0, len(parts[doc]) - over)]
            out.append(head + [t for p in parts for t in p])
        return out

    def document_room(self, query: str) -> int:
        """Document tokens the counted segments hold beside ``query`` before the document's segment is cut."""
        texts = [fill(s.text, query=query, document="", instruction=self.instruction) for s in self.segments]
        ids = self.lm.encode(texts, add_special_tokens=False)
        used = int(self.bos) + sum(
            len(ids[t][: s.max_tokens]) for t, s in zip(texts, self.segments, strict=True) if s.counted
        )
        return self.max_length - used

    def _forward(self, input_ids, attention_mask):
        out = self.lm.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1)
        return yes_no_score(out.logits[:, -1], self.yes, self.no, self.score_mode)
