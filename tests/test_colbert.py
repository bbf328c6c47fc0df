"""ColBERT for real: the scores PyLate and colbert-ai themselves computed for 96 DL19 pairs on tiny checkpoints they
saved (../shared/models/colbert-tiny-*), reproduced within 1e-4; checkpoints it cannot read refused in one line."""

import json
import shutil
from collections import defaultdict

import numpy as np
import pytest
from conftest import SHARED

from rerank_eval.errors import ConfigError
from rerank_eval.rerankers.colbert import ColBERTReranker
from rerank_eval.types import Doc, Query

MODELS = SHARED / "models"


def reference(folder):
    rows = [json.loads(line) for line in (folder / "reference_scores.jsonl").read_text().splitlines()]
    by_query = defaultdict(list)
    for r in rows:
        by_query[(r["query_id"], r["query"])].append(r)
    return by_query


@pytest.mark.parametrize(
    "name, kind", [("colbert-tiny-pylate", "pylate"), ("colbert-tiny-stanford", "stanford")]
)
def test_scores_equal_the_librarys_own(name, kind):
    folder = MODELS / name
    rr = ColBERTReranker(str(folder), batch_size=5)  # batches of 5 mixed-length passages, padded
    assert rr.format.kind == kind and rr.name == f"colbert-{name}-fp32"
    diffs = []
    for (qid, text), rows in reference(folder).items():
        got = rr.score(Query(qid, text), [Doc(r["doc_id"], r["text"]) for r in rows])
        diffs += [abs(g - r["score"]) for g, r in zip(got, rows, strict=True)]
    assert len(diffs) == 96 and max(diffs) < 1e-4, max(diffs)


def test_what_each_format_declares_is_what_is_used():
    pylate = ColBERTReranker(str(MODELS / "colbert-tiny-pylate"))
    f = pylate.format
    assert (f.query_marker, f.doc_marker, f.query_length, f.doc_length) == ("[Q] ", "[D] ", 32, 180)
    assert f.expansion and not f.attend_expansion and "," in f.skiplist
    ids, mask, keep = pylate._ids(["who is robert gray"], True)
    tok = pylate.tokenizer
    assert ids.shape == (1, 32) and ids[0, 1] == tok.convert_tokens_to_ids("[Q] ")
    assert int((ids[0] == tok.mask_token_id).sum()) == 32 - len(tok("who is robert gray")["input_ids"]) - 1
    assert keep.all() and mask.sum() == len(tok("who is robert gray")["input_ids"]) + 1  # [MASK]s unattended
    ids, mask, keep = pylate._ids(["a, b."], False)  # the prefix inserted after [CLS], punctuation dropped
    want = [tok.cls_token_id, tok.convert_tokens_to_ids("[D] "), *tok.convert_tokens_to_ids(["a", "b"])]
    assert ids[0][keep[0]].tolist() == [*want, tok.sep_token_id]
    stanford = ColBERTReranker(str(MODELS / "colbert-tiny-stanford"))
    ids, _, keep = stanford._ids(["a, b."], False)
    tok = stanford.tokenizer
    assert [tok.convert_ids_to_tokens(int(i)) for i in ids[0][keep[0]]] == [
        "[CLS]",
        "[unused1]",
        "a",
        "b",
        "[SEP]",
    ]
    assert stanford.identity != pylate.identity and "stanford" in stanford.identity


def test_a_checkpoint_it_cannot_interpret_is_refused(tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(MODELS / "colbert-tiny-stanford", plain)
    (plain / "artifact.metadata").unlink()
    with pytest.raises(ConfigError, match="neither a PyLate checkpoint .* nor a Stanford ColBERT one"):
        ColBERTReranker(str(plain))
    broken = tmp_path / "broken"
    shutil.copytree(MODELS / "colbert-tiny-pylate", broken)
    cfg = json.loads((broken / "config_sentence_transformers.json").read_text())
    del cfg["query_length"]
    (broken / "config_sentence_transformers.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"lacks \['query_length'\]"):
        ColBERTReranker(str(broken))
    l2 = tmp_path / "l2"
    shutil.copytree(MODELS / "colbert-tiny-stanford", l2)
    meta = json.loads((l2 / "artifact.metadata").read_text())
    (l2 / "artifact.metadata").write_text(json.dumps({**meta, "similarity": "l2"}))
    with pytest.raises(ConfigError, match="cosine ColBERT only"):
        ColBERTReranker(str(l2))


def test_scores_do_not_depend_on_the_batch():
    rr = ColBERTReranker(str(MODELS / "colbert-tiny-pylate"), batch_size=1)
    (qid, text), rows = next(iter(reference(MODELS / "colbert-tiny-pylate").items()))
    docs = [Doc(r["doc_id"], r["text"]) for r in rows]
    one = rr.score(Query(qid, text), docs)
    rr.batch_size = 12
    np.testing.assert_allclose(rr.score(Query(qid, text), docs), one, atol=1e-5)
