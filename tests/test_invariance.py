"""The mixed-company test, for every local family in fp32 and bf16: a document's score alone equals, bit for bit,
its score among as many other documents shuffled in (other batch mates, other batch boundaries, other blocks).
``scoring.batching`` says why it holds; the throughput mode is the control that shows the test can fail."""

import random

import numpy as np
import pytest
import torch
from conftest import CE_MODEL, SHARED
from test_local_llm import config, models  # noqa: F401  (the tiny causal-LM and seq2seq checkpoints)

from rerank_eval.types import Doc, Query

DTYPES = ["fp32", "bf16"]


@pytest.fixture(scope="module")
def company(dl19):
    """A DL19 query with 12 of its BM25 candidates, and 12 candidates of other queries as their company."""
    run = [line.split() for line in (dl19.path / "runs" / "bm25.top100.trec").read_text().splitlines()]
    queries = {q.query_id: q for q in dl19.queries()}
    first = run[0][0]
    own = [r[2] for r in run if r[0] == first][:12]
    others = [r[2] for r in run if r[0] != first][::97][:12]
    docs = dl19.docs(own + others)
    return queries[first], [docs[d] for d in own], [docs[d] for d in others]


def alone_and_mixed(rr, query, docs, mates, seed=0):
    """Scores of ``docs`` alone (one call) and among ``mates`` (shuffled, one call and again in calls of 7)."""
    alone = np.array(rr.score(query, docs))
    mixed = [*docs, *mates]
    random.Random(seed).shuffle(mixed)
    where = [mixed.index(d) for d in docs]
    together = np.array(rr.score(query, mixed))[where]
    small = np.concatenate([rr.score(query, mixed[a : a + 7]) for a in range(0, len(mixed), 7)])[where]
    return alone, together, small


def assert_invariant(rr, company):
    alone, together, small = alone_and_mixed(rr, *company)
    assert np.array_equal(alone, together) and np.array_equal(alone, small), np.abs(alone - together).max()
    assert np.ptp(alone) > 0  # real, differing scores


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_cross_encoder_score_does_not_depend_on_its_company(company, dtype):
    from rerank_eval.rerankers.cross_encoder import CrossEncoderReranker

    rr = CrossEncoderReranker(str(CE_MODEL), max_length=256, dtype=dtype)
    assert rr.engine.batching == "blocks"
    assert_invariant(rr, company)


def test_a_cross_encoder_score_does_not_depend_on_the_thread_count(company):
    from rerank_eval.rerankers.cross_encoder import CrossEncoderReranker

    rr, before = CrossEncoderReranker(str(CE_MODEL), max_length=256), torch.get_num_threads()
    query, docs, _ = company
    try:
        torch.set_num_threads(1)
        one = rr.score(query, docs)
        torch.set_num_threads(2)
        assert rr.score(query, docs) == one
    finally:
        torch.set_num_threads(before)


def test_the_throughput_mode_fails_the_same_test(company):
    """The control: packed batches of varying composition move bf16 scores, so the test has power."""
    from rerank_eval.rerankers.cross_encoder import CrossEncoderReranker

    rr = CrossEncoderReranker(str(CE_MODEL), max_length=256, dtype="bf16", batch_invariant=False)
    alone, together, small = alone_and_mixed(rr, *company)
    assert not (np.array_equal(alone, together) and np.array_equal(alone, small))
    assert np.abs(alone - together).max() < 0.2  # rounding, not a different model


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_cross_encoder_through_its_own_forward_does_not_depend_on_its_company(company, electra_ce, dtype):
    """A model that is not BERT (a random ELECTRA classifier) runs fixed-shape length buckets."""
    from rerank_eval.rerankers.cross_encoder import CrossEncoderReranker

    rr = CrossEncoderReranker(str(electra_ce), max_length=256, dtype=dtype)
    assert rr.engine.batching == "buckets"
    assert_invariant(rr, company)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_bi_encoder_score_does_not_depend_on_its_company(company, dtype):
    from rerank_eval.rerankers.bi_encoder import BiEncoderReranker

    rr = BiEncoderReranker(dtype=dtype)
    assert rr.encoder.batching == "blocks"
    query, docs, mates = company
    alone = np.array(rr.score(query, docs))
    rr._memo.clear()  # encoded afresh among the others
    mixed = [*mates[:6], *docs, *mates[6:]]
    random.Random(1).shuffle(mixed)
    together = np.array(rr.score(query, mixed))[[mixed.index(d) for d in docs]]
    assert np.array_equal(alone, together) and np.ptp(alone) > 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", ["causal_lm", "seq2seq"])
def test_a_local_llm_score_does_not_depend_on_its_company(models, family, dtype):  # noqa: F811
    from hydra.utils import get_class

    kwargs = config(family, model=str(models / ("qwen" if family == "causal_lm" else "t5")), dtype=dtype)
    target = get_class(
        "rerank_eval.rerankers.causal_lm.CausalLMReranker"
        if family == "causal_lm"
        else "rerank_eval.rerankers.seq2seq.Seq2SeqReranker"
    )
    rr = target(**{**kwargs, "max_length": 160} if family == "causal_lm" else kwargs)
    assert rr.lm.batching == "buckets"
    words = ["cats", "dogs", "fish", "birds", "trees", "rivers", "stones", "clouds"]
    docs = [Doc(str(i), " ".join(words[: 1 + i % 8]) * (1 + i // 8)) for i in range(16)]
    mates = [Doc(f"m{i}", " ".join(reversed(words[: 1 + i % 8])) * (1 + i // 3)) for i in range(16)]
    assert_invariant(rr, (Query("q", "where do fish live"), docs, mates))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_colbert_score_does_not_depend_on_its_company(company, dtype):
    from rerank_eval.rerankers.colbert import ColBERTReranker

    rr = ColBERTReranker(str(SHARED / "models" / "colbert-tiny-pylate"), dtype=dtype, batch_size=5)
    assert rr.policy == "invariant"
    assert_invariant(rr, company)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_maxsim_demo_does_not_depend_on_its_company_and_equals_the_librarys_vectors(company, dtype):
    from rerank_eval.rerankers.maxsim_demo import MaxSimDemoReranker

    rr = MaxSimDemoReranker(dtype=dtype, batch_size=5)
    query, own, others = company  # half the company: eight-row buckets of its many widths cost the most here
    assert_invariant(rr, (query, own[:6], others[:6]))
    texts = [d.full_text for d in company[1][:3]]
    st = rr.encoder.model
    st.max_seq_length = 180
    lib = st.encode(texts, output_value="token_embeddings", batch_size=1, show_progress_bar=False)
    ours = rr._tokens(texts, 180)
    for a, b in zip(ours, lib, strict=True):
        b = b.float().numpy()
        np.testing.assert_allclose(
            a, b / np.linalg.norm(b, axis=1, keepdims=True), atol=1e-5 if dtype == "fp32" else 3e-2
        )
