"""Seq2seq rerankers that answer true or false (monoT5): the prompt ``Query: {query} Document: {document}
Relevant:`` is encoded as the tokenizer encodes it (its end-of-sequence token, truncation to ``max_length``), and
the score is read from the logits of the first decoded token, the decoder starting from its start token: the
recipe of ``castorini/monot5-base-msmarco-10k`` (pygaggle's ``MonoT5``, whose log p(true | true or false) is the
log-sigmoid of ``log_odds`` and ranks the same)."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError
from .local import FIELD, AnswerReranker, answers, check_score, fill, shared_model, yes_no_score


class Seq2SeqReranker(AnswerReranker):
    """Scores each (query, title + text) pair by an encoder-decoder's true/false answer.

    Args:
        model: a Hugging Face id (``castorini/monot5-base-msmarco-10k``) or a local folder.
        template: the input text, with ``{query}`` and ``{document}``.
        answer_tokens: the two vocabulary entries whose logits answer, the positive one first (T5's ``▁true``,
            ``▁false``).
        score: ``log_odds`` or ``yes_logit`` (the true logit), as for ``causal_lm``.
        max_length: the longest input in tokens (monoT5 was trained on 512).
        revision, device, dtype, batch_invariant, batch_tokens: see ``local.LocalModel``.
    """

    def __init__(
        self,
        model: str = "castorini/monot5-base-msmarco-10k",
        template: str = "Query: {query} Document: {document} Relevant:",
        answer_tokens: Sequence[str] = ("▁true", "▁false"),
        score: str = "log_odds",
        max_length: int = 512,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "fp32",
        batch_invariant: bool = True,
        batch_tokens: int | None = None,
    ):
        from transformers import AutoModelForSeq2SeqLM

        what = "reranker=seq2seq"
        if sorted(set(FIELD.findall(template))) != ["document", "query"]:
            raise ConfigError(f"{what}: the template needs {{query}} and {{document}} and no other field")
        self.template, self.score_mode, self.max_length = template, check_score(score, what), int(max_length)
        self.lm = lm = shared_model(
            model,
            AutoModelForSeq2SeqLM,
            revision,
            device,
            dtype,
            batch_invariant,
            batch_tokens,
            "right",
            "ForConditionalGeneration",
        )
        self.yes, self.no = answers(lm, answer_tokens, what)
        self.start = lm.model.config.decoder_start_token_id
        if self.start is None:
            raise ConfigError(
                f"{what}: {model} declares no decoder_start_token_id; is it an encoder-decoder?"
            )
        self._describe(
            "seq2seq", "t5", model, f"{template}|{'|'.join(answer_tokens)}", score, "rerankers/seq2seq"
        )

    def pair_ids(self, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
        texts = [fill(self.template, query=q, document=d) for q, d in pairs]
        ids = self.lm.encode(texts, truncation=True, max_length=self.max_length)
        return [ids[t] for t in texts]

    def _forward(self, input_ids, attention_mask):
        import torch

        start = torch.full((len(input_ids), 1), self.start, dtype=input_ids.dtype, device=input_ids.device)
        out = self.lm.model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=start)
        return yes_no_score(out.logits[:, 0], self.yes, self.no, self.score_mode)
