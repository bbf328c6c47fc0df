"""Fine-tune a cross-encoder on a dataset's training qrels with hard negatives mined by a first stage.

``python -m rerank_eval.train dataset=scifact`` writes a model folder that ``reranker=cross_encoder
reranker.model=<folder>`` loads. The recipe is listwise: each positive is scored against ``negatives`` hard
negatives (non-relevant documents from the first stage's top ``mine_depth``) plus ``in_batch_negatives`` other
groups' documents, with softmax cross-entropy over the group (sentence-transformers'
``MultipleNegativesRankingLoss`` for cross-encoders, on raw logits). A pointwise BCE recipe does not learn on
SciFact from this body (see ../shared/models/README.md).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .datasets import Dataset
from .errors import ConfigError, DataError
from .retrievers import Retriever
from .scoring.models import MINILM_ID, pick_device, resolve_model

log = logging.getLogger("rerank_eval")


@dataclass
class TrainSettings:
    init_model: str = MINILM_ID  # the body to start from (the bundled all-MiniLM-L6-v2 by default)
    epochs: float = 5.0
    max_steps: int = -1  # > 0 stops early (a tiny budget for smoke tests)
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    batch_groups: int = 8  # groups (query, positive, negatives) per step
    negatives: int = 15
    in_batch_negatives: int = 0
    mine_depth: int = 30
    max_length: int = 256
    max_queries: int | None = None  # train on the first N training queries only (a CPU budget)
    bf16: str = "auto"  # auto: bf16 where the hardware has it
    seed: int = 42


def mine_groups(dataset: Dataset, retriever: Retriever, s: TrainSettings) -> list[dict]:
    """One group per (query, positive): the positive, then ``s.negatives`` hard negatives from the first stage."""
    qrels = dataset.qrels()
    queries = [q for q in dataset.queries() if any(g > 0 for g in qrels.get(q.query_id, {}).values())]
    if s.max_queries:
        queries = queries[: s.max_queries]
    if not queries:
        raise DataError(f"{dataset.name} has no training queries with a relevant document")
    retriever.index(dataset)
    ranking = retriever.retrieve(queries, s.mine_depth)
    rng = random.Random(s.seed)
    all_ids = None
    groups = []
    for q in queries:
        rel = qrels[q.query_id]
        hard = [d.doc_id for d in ranking[q.query_id] if rel.get(d.doc_id, 0) <= 0]
        for pos in (d for d, g in rel.items() if g > 0):
            if len(hard) >= s.negatives:
                negs = rng.sample(hard, s.negatives)
            else:  # too few hard negatives: fill up with random documents
                if all_ids is None:
                    all_ids = [d.doc_id for d in dataset.corpus()]
                pool = [
                    d for d in rng.sample(all_ids, min(len(all_ids), 4 * s.negatives)) if rel.get(d, 0) <= 0
                ]
                negs = hard + pool[: s.negatives - len(hard)]
            groups.append({"query": q.text, "positive": pos, "negatives": negs})
    texts = dataset.docs(sorted({d for g in groups for d in [g["positive"], *g["negatives"]]}))
    return [
        {
            "query": g["query"],
            "positive": texts[g["positive"]].full_text,
            **{f"negative_{i + 1}": texts[d].full_text for i, d in enumerate(g["negatives"])},
        }
        for g in groups
    ]


def train_cross_encoder(
    dataset: Dataset,
    retriever: Retriever,
    output_dir: str | Path,
    settings: TrainSettings | None = None,
    progress: bool = True,
) -> dict:
    """Fine-tune and save a cross-encoder; returns what was done (counts, time, settings).

    Raises:
        ConfigError: bad settings or an output folder that already holds a model.
        DataError: no usable training data.
    """
    import torch
    from datasets import Dataset as HFDataset
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss

    from .scoring.models import cpu_has_bf16

    s = settings or TrainSettings()
    out = Path(output_dir)
    if (out / "config.json").exists():
        raise ConfigError(f"{out} already holds a model; pass another output folder (output=...)")
    if s.negatives < 1 or s.batch_groups < 1 or s.max_length < 16:
        raise ConfigError("train needs negatives >= 1, batch_groups >= 1 and max_length >= 16")
    t0 = time.perf_counter()
    rows = mine_groups(dataset, retriever, s)
    mined_s = time.perf_counter() - t0
    device = pick_device("auto")
    use_bf16 = (
        s.bf16 is True
        or s.bf16 == "true"
        or (s.bf16 == "auto" and (torch.cuda.is_bf16_supported() if device == "cuda" else cpu_has_bf16()))
    )
    model = CrossEncoder(
        resolve_model(s.init_model),
        num_labels=1,
        max_length=s.max_length,
        device=device,
        model_kwargs={"dtype": torch.float32},
    )  # fp32 master weights; bf16 autocast computes

    class GroupLoss(MultipleNegativesRankingLoss):
        """Softmax cross-entropy over each group; in_batch_negatives=0 adds no other group's documents."""

        def get_in_batch_negatives(self, anchors, candidates):
            if not s.in_batch_negatives:
                return iter(())
            return super().get_in_batch_negatives(anchors, candidates)

    loss = GroupLoss(
        model, num_negatives=s.in_batch_negatives or None, scale=1.0, activation_fn=torch.nn.Identity()
    )
    tmp = out.with_name(f".{out.name}.partial")
    args = CrossEncoderTrainingArguments(
        output_dir=str(tmp / "trainer"),
        num_train_epochs=s.epochs,
        max_steps=s.max_steps,
        per_device_train_batch_size=s.batch_groups,
        learning_rate=s.learning_rate,
        weight_decay=s.weight_decay,
        warmup_steps=s.warmup_ratio,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        bf16=use_bf16,
        use_cpu=device == "cpu",
        seed=s.seed,
        save_strategy="no",
        logging_steps=20,
        report_to="none",
        disable_tqdm=not progress or bool(os.environ.get("RERANK_EVAL_NO_PROGRESS")),
        dataloader_drop_last=True,
    )
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=HFDataset.from_list(rows), loss=loss)
    t1 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t1
    model.save_pretrained(str(tmp))
    info = {
        "dataset": dataset.name,
        "groups": len(rows),
        "pairs_per_epoch": len(rows) * (1 + s.negatives),
        "steps": trainer.state.global_step,
        "mine_s": round(mined_s, 1),
        "train_s": round(train_s, 1),
        "device": device,
        "bf16": use_bf16,
        "settings": asdict(s),
    }
    (tmp / "train_info.json").write_text(json.dumps(info, indent=2))
    import shutil

    shutil.rmtree(tmp / "trainer", ignore_errors=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return info


def main() -> None:
    """``rerank-eval-train [overrides]`` (or ``python -m rerank_eval.train``; the recipe is conf/train.yaml)."""
    import hydra

    from .console import CONF_MODULE, check_no_secret_inputs, friendly_errors, full_errors

    full_errors()

    @hydra.main(version_base="1.3", config_path=f"pkg://{CONF_MODULE}", config_name="train")
    @friendly_errors
    def _train(cfg) -> None:
        from omegaconf import OmegaConf

        from .config import build

        plain = OmegaConf.to_container(cfg, resolve=True)
        settings = TrainSettings(**plain["train"])
        dataset = build(cfg.dataset, "dataset")
        retriever = build(cfg.retriever, "retriever")
        info = train_cross_encoder(
            dataset, retriever, plain["output"], settings, progress=plain.get("progress", True)
        )
        print(
            f"trained on {info['groups']} groups ({info['steps']} steps) in {info['train_s']:.0f}s on "
            f"{info['device']}; model in {plain['output']}\n  evaluate: python -m rerank_eval dataset="
            f"{plain['dataset']['name']} reranker=cross_encoder reranker.model={plain['output']}"
        )

    friendly_errors(check_no_secret_inputs)(sys.argv[1:])
    friendly_errors(_train)()


if __name__ == "__main__":
    main()
