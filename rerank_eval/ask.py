"""``rerank-eval-ask [overrides] "a question"`` (or ``python -m rerank_eval.ask``): retrieve, rerank and print
the top_k documents with their scores; with ``ANTHROPIC_API_KEY`` set, Claude also answers from the reranked context (the RAG use).

Overrides are the job's (``dataset=scifact reranker=cross_encoder reranker.model=... candidates=50 top_k=5``);
the question is every word that is not an override of a config key, or everything after ``--``, or
``question="..."``; ``--no-answer`` skips generation; ``ANTHROPIC_BASE_URL`` and ``RERANK_EVAL_ASK_MODEL`` pick the
endpoint and model.
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


def split_args(args: list[str], keys: set[str]) -> tuple[list[str], str, bool]:
    """(overrides, question, answer) from the command line. The question is everything after ``--``, or
    ``question=...``, or else every word that is not an override of a config key in ``keys`` (so "Is E=mc2
    relevant?" stays a question)."""
    import re

    answer = "--no-answer" not in args
    args = [a for a in args if a != "--no-answer"]
    after = args[args.index("--") + 1 :] if "--" in args else None
    overrides, loose, named = [], [], ""
    for a in args[: args.index("--")] if after is not None else args:
        m = re.match(r"[+~]{0,2}([A-Za-z_][\w.\-/]*)=", a)
        if m and m.group(1) == "question":
            named = a[m.end() :]
        elif m and re.split(r"[./]", m.group(1))[0] in keys:
            overrides.append(a)
        else:
            loose.append(a)
    return overrides, " ".join(after if after is not None else loose).strip() or named.strip(), answer


def main(argv: list[str] | None = None) -> None:
    """``rerank-eval-ask [overrides] "a question"`` (``--`` before a question that looks like an override)."""
    from hydra import compose, initialize_config_module

    from .console import CONF_MODULE, check_no_secret_inputs, friendly_errors, full_errors

    @friendly_errors
    def _main(args: list[str]) -> None:
        if args[:1] in (["-h"], ["--help"]):
            print(__doc__.replace("``", "").strip())
            return
        full_errors()
        with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
            keys = set(compose("config")) | {"hydra"}
            overrides, question, answer = split_args(args, keys)
            if not question:
                raise ConfigError(
                    'ask needs a question: rerank-eval-ask [overrides] "your question" (or -- your question, '
                    'or question="...")'
                )
            check_no_secret_inputs(overrides)
            cfg = compose("config", overrides=overrides)
        ask(cfg, question, answer=answer)

    _main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
