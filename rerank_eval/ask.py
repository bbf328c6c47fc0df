"""``python -m rerank_eval.ask [overrides] "a question"``: retrieve, rerank and print the top_k documents with
their scores; with ``ANTHROPIC_API_KEY`` set, Claude also answers from the reranked context (the RAG use).

Overrides are the job's (``dataset=scifact reranker=cross_encoder reranker.model=... candidates=50 top_k=5``);
``--no-answer`` skips generation; ``ANTHROPIC_BASE_URL`` and ``RERANK_EVAL_ASK_MODEL`` pick the endpoint and model.
"""

from __future__ import annotations

import os
import sys
import textwrap

from .errors import ConfigError
from .types import Query

ANSWER_MODEL = "claude-sonnet-4-20250514"
ANSWER_PROMPT = (
    "Query: {query}\n\n{passages}\n\nAnswer the query from the passages above only, citing passage ids "
    "like [2]. If they do not answer it, say so."
)


def ask(cfg, question: str, answer: bool = True, out=sys.stdout) -> list[tuple[str, float]]:
    """Print the reranked top_k for ``question`` (and an answer when a key is set); return (doc_id, score)."""
    from .config import build_components
    from .pipeline import check_depths, run_pipeline
    from .rerankers.llm import SYSTEM, fence

    check_depths(cfg.candidates, cfg.top_k)
    comps = build_components(cfg)
    query = Query("ask", question)
    res = run_pipeline(
        comps.dataset,
        comps.retriever,
        comps.reranker,
        cfg.candidates,
        cfg.top_k,
        queries=[query],
        progress=False,
    )
    hits = res.final["ask"]
    docs = comps.dataset.docs([h.doc_id for h in hits])
    rr = comps.reranker.name if comps.reranker is not None else "first stage"
    print(
        f"top {len(hits)} of {cfg.candidates} candidates ({comps.retriever.name} -> {rr}) for: {question}",
        file=out,
    )
    for rank, h in enumerate(hits, 1):
        d = docs[h.doc_id]
        snippet = textwrap.shorten(d.full_text, 160, placeholder=" ...")
        print(f"{rank:>3}. [{h.score:.4f}] {h.doc_id}: {snippet}", file=out)
    if answer and os.environ.get("ANTHROPIC_API_KEY"):
        from .rerankers.api import require

        anthropic = require("anthropic", "anthropic")
        client = anthropic.Anthropic()  # reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL
        passages = "\n".join(fence(i + 1, docs[h.doc_id].full_text, 2000) for i, h in enumerate(hits))
        msg = client.messages.create(
            model=os.environ.get("RERANK_EVAL_ASK_MODEL", ANSWER_MODEL),
            max_tokens=600,
            system=SYSTEM.replace("rank passages", "answer questions from passages"),
            messages=[{"role": "user", "content": ANSWER_PROMPT.format(query=question, passages=passages)}],
        )
        print(
            "\nanswer (" + msg.model + "):\n" + "".join(getattr(b, "text", "") for b in msg.content), file=out
        )
    elif answer:
        print("\n(set ANTHROPIC_API_KEY to have Claude answer from these documents)", file=out)
    return [(h.doc_id, h.score) for h in hits]


def main(argv: list[str] | None = None) -> None:
    from hydra import compose, initialize_config_dir

    from .cli import CONF_DIR, check_group_choices, check_no_secret_inputs, friendly_errors

    @friendly_errors
    def _main(args: list[str]) -> None:
        no_answer = "--no-answer" in args
        args = [a for a in args if a != "--no-answer"]
        overrides = [a for a in args if "=" in a and not a.startswith("=")]
        question = " ".join(a for a in args if a not in overrides).strip()
        if not question:
            raise ConfigError('ask needs a question: python -m rerank_eval.ask [overrides] "your question"')
        check_group_choices(overrides)
        check_no_secret_inputs(overrides)
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        ask(cfg, question, answer=not no_answer)

    _main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
