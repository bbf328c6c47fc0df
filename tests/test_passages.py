"""Long documents as passages (``reranker.long_docs=passages``): exact passage boundaries, aggregation on
hand-computed scores, a query that leaves no room refused, passages that fit every family's pairs uncut, and a
passages job served from the cache equal to the same job scored fresh."""

import json

import numpy as np
import pytest
from conftest import CE_MODEL, SHARED, TINY
from test_local_llm import LONG, config, models  # noqa: F401  (the tiny causal-LM and seq2seq checkpoints)
from test_trust import TINY_CE, compose, job

from rerank_eval.config import build_components, check_config
from rerank_eval.datasets import BeirDirDataset
from rerank_eval.errors import ConfigError
from rerank_eval.scoring.passages import PassageReranker, aggregate, spans
from rerank_eval.types import Doc, Query

WORDS = "one two three four five six seven eight nine ten"  # one word piece each in the BERT vocabulary


@pytest.fixture(scope="module")
def bert_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(CE_MODEL)


class WordCount:
    """A base reranker with a real tokenizer whose score is hand-computable: how often ``cats`` occurs."""

    name, identity, pointwise = "count", "count|v1", True

    def __init__(self, tokenizer, room=100):
        self.tokenizer, self.room, self.seen = tokenizer, room, []

    def document_room(self, query):
        return self.room - len(query.split())

    def score(self, query, docs):
        self.seen += [d.full_text for d in docs]
        return [float(d.full_text.split().count("cats")) for d in docs]


def cut(tokenizer, text, window, stride):
    return [text[a:b] for a, b in spans(tokenizer, text, window, stride)]


def test_passage_boundaries_on_a_hand_made_document(bert_tokenizer):
    tok = bert_tokenizer
    assert cut(tok, WORDS, 4, 1) == ["one two three four", "four five six seven", "seven eight nine ten"]
    assert cut(tok, WORDS, 4, 2) == [
        "one two three four",
        "three four five six",
        "five six seven eight",
        "seven eight nine ten",
    ]
    # no overlap: the last passage is the short rest
    assert cut(tok, WORDS, 4, 0) == ["one two three four", "five six seven eight", "nine ten"]
    # a document that fits one window is one passage, the whole text
    assert cut(tok, "one two three", 4, 1) == ["one two three"]
    assert cut(tok, WORDS, 10, 3) == [WORDS]
    # words are never split across passages; a word longer than a window is
    text = "unbelievably cats"  # un ##bel ##ie ##va ##bly cats
    assert cut(tok, text, 3, 0) == ["unbelie", "vably cats"]
    assert cut(tok, text, 6, 1) == [text]
    assert cut(tok, "cats unbelievably", 4, 0) == ["cats", "unbelieva", "bly"]


def test_titles_are_prepended_to_every_passage_and_take_their_share_of_it(bert_tokenizer):
    base = WordCount(bert_tokenizer)
    pr = PassageReranker(base, passage_tokens=6, stride=1)
    units, owner = pr.passages(
        [Doc("a", WORDS, "cats cats"), Doc("b", "short one", "Title"), Doc("c", "one two three four five")]
    )
    # "a": the title's 2 tokens leave windows of 4; "b" fits whole (its full text, as truncation sees it);
    # "c" has no title: windows of 6
    assert [u.full_text for u in units] == [
        "cats cats one two three four",
        "cats cats four five six seven",
        "cats cats seven eight nine ten",
        "Title short one",
        "one two three four five",
    ]
    assert owner.tolist() == [0, 0, 0, 1, 2]
    assert {u.doc_id for u in units[:3]} == {"a"}
    # a title that leaves less than half of a passage still leaves half of it
    units, _ = pr.passages([Doc("d", WORDS, "cats cats cats cats cats")])
    assert units[0].full_text == "cats cats cats cats cats one two three"


def test_aggregates_on_hand_computed_scores():
    scores = np.array([1.0, 3.0, 2.0, 5.0, 0.5, 0.25], dtype=np.float32)
    owner = np.array([0, 0, 0, 1, 2, 2])
    assert aggregate(scores, owner, 3, "max").tolist() == [3.0, 5.0, 0.5]
    assert aggregate(scores, owner, 3, "first").tolist() == [1.0, 5.0, 0.5]
    assert aggregate(scores, owner, 3, "sum").tolist() == [6.0, 5.0, 0.75]
    assert aggregate(scores, owner, 3, "mean").tolist() == [2.0, 5.0, 0.375]
    assert aggregate(scores, owner, 3, "max").dtype == np.float32
    with pytest.raises(ValueError):
        aggregate(scores, np.array([0, 0, 2, 2, 2, 2]), 3, "max")  # document 1 has no passage


def test_a_documents_score_is_its_passages_aggregate(bert_tokenizer):
    docs = [
        Doc("a", "one two three cats four cats five cats"),
        Doc("b", "one cats"),
        Doc("c", "one two three"),
    ]
    q = Query("q", "what do cats do")
    # "a" in windows of 4, overlap 1: "one two three cats" (1), "cats four cats five" (2), "five cats" (1)
    expected = {
        "max": [2.0, 1.0, 0.0],
        "first": [1.0, 1.0, 0.0],
        "sum": [4.0, 1.0, 0.0],
        "mean": [float(np.float32(4) / np.float32(3)), 1, 0],  # in fp32
    }
    for how, want in expected.items():
        base = WordCount(bert_tokenizer)
        pr = PassageReranker(base, passage_tokens=4, stride=1, aggregate=how)
        assert pr.score(q, docs) == pytest.approx(want, abs=0)
        assert base.seen == [
            "one two three cats",
            "cats four cats five",
            "five cats",
            "one cats",
            "one two three",
        ]


def test_settings_out_of_range_and_families_that_cannot_cut_passages_are_refused(bert_tokenizer, monkeypatch):
    monkeypatch.setenv("COHERE_API_KEY", "test-key")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    base = WordCount(bert_tokenizer)
    for bad, why in [
        ({"passage_tokens": 0}, "passage_tokens must be an integer >= 1"),
        ({"stride": 128}, "keep it below passage_tokens"),
        ({"aggregate": "median"}, "aggregate must be one of max, first, sum, mean"),
    ]:
        with pytest.raises(ConfigError, match=why):
            PassageReranker(base, **bad)
    for overrides, why in [
        (["reranker=cohere", "+reranker.long_docs=passages"], "service cuts or chunks long documents itself"),
        (["reranker=llm", "+reranker.long_docs=passages"], "a listwise reranker orders whole documents"),
        (["reranker=none", "+reranker.long_docs=passages"], "reranker=none scores nothing"),
    ]:
        with pytest.raises(ConfigError, match=why):
            build_components(compose(*overrides))
    with pytest.raises(ConfigError, match="long_docs must be one of truncate, passages"):
        check_config(compose(*TINY_CE, "reranker.long_docs=chunks"))
    with pytest.raises(ConfigError, match="aggregate must be one of"):
        check_config(compose(*TINY_CE, "reranker.long_docs=passages", "reranker.aggregate=median"))


def test_the_policy_is_in_the_name_and_identity_and_passages_share_the_base_cache_key():
    rr = build_components(
        compose(*TINY_CE, "reranker.long_docs=passages", "reranker.passage_tokens=64")
    ).reranker
    first = build_components(
        compose(
            *TINY_CE, "reranker.long_docs=passages", "reranker.passage_tokens=64", "reranker.aggregate=first"
        )
    ).reranker
    plain = build_components(compose(*TINY_CE)).reranker
    assert rr.name == f"{plain.name}-p64s32-max" and first.name == f"{plain.name}-p64s32-first"
    assert len({rr.identity, first.identity, plain.identity}) == 3
    assert rr.base.identity == first.base.identity == plain.identity  # passage scores are the base's scores
    assert rr.settings["long_docs"] == "passages" and rr.settings["passage_tokens"] == 64


def test_a_query_that_leaves_a_pair_no_room_for_a_passage_is_refused_in_one_line(tmp_path):
    # the shared cross-encoder at 128 tokens: "what do cats eat" (4 tokens) and 3 special tokens leave 121
    over = [*TINY_CE, "reranker.long_docs=passages", "reranker.passage_tokens=122"]
    with pytest.raises(ConfigError) as e:
        job(tmp_path / "job", *over)
    assert "reranker.passage_tokens<=121 or raise reranker.max_length" in str(e.value)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "job" / "metrics.json").exists()


def test_a_passages_job_served_from_the_cache_equals_it_scored_fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANK_EVAL_CACHE", str(tmp_path / "cache"))
    over = [*TINY_CE, "reranker.long_docs=passages", "reranker.passage_tokens=4", "reranker.stride=1"]
    fresh = job(tmp_path / "fresh", *over)
    served = job(tmp_path / "served", *over)
    first = job(tmp_path / "first", *over, "reranker.aggregate=first")
    assert fresh.counts["pairs_scored"] > fresh.counts["pairs_cached"] == 0
    assert fresh.counts["passages_per_doc"] > 1
    # every passage came from the cache, the probe's fresh scores equal them, the run file is the same bytes
    assert (
        served.counts["pairs_scored"] == 0 and served.counts["pairs_cached"] == fresh.counts["pairs_scored"]
    )
    assert served.counts["probe_max_abs_diff"] == 0
    assert (tmp_path / "served" / "run.scores.tsv").read_text() == (
        tmp_path / "fresh" / "run.scores.tsv"
    ).read_text()
    assert served.metrics == fresh.metrics
    # another aggregate of the same passages scores nothing
    assert first.counts["pairs_scored"] == 0 and first.counts["pairs_cached"] == fresh.counts["pairs_scored"]
    # the cost ledger counts every (query, passage) pair's tokens, as the tokenizer builds the pair
    rr = build_components(compose(*over)).reranker
    tiny = BeirDirDataset(TINY)
    queries = {q.query_id: q.text for q in tiny.queries()}
    hits: dict[str, list[str]] = {}
    for line in (tmp_path / "fresh" / "first_stage.trec").read_text().splitlines():
        q, _, d, *_ = line.split()
        hits.setdefault(q, []).append(d)
    units = {q: rr.passages([tiny.docs(ds)[d] for d in ds])[0] for q, ds in hits.items()}
    assert sum(map(len, units.values())) == fresh.counts["pairs_scored"]
    sent = sum(len(rr.tokenizer(queries[q], u.full_text)["input_ids"]) for q, us in units.items() for u in us)
    cost = json.loads((tmp_path / "fresh" / "metrics.json").read_text())["cost"]
    assert cost["tokens_sent"] == sent


def _fits_whole(rr, query, passage):
    """Whether the family's own input for (query, passage) keeps every token of the passage."""
    n = len(rr.tokenizer(passage, add_special_tokens=False)["input_ids"])
    base = getattr(rr, "engine", None)
    if base is not None:  # a cross-encoder: its pair building's count of kept document tokens
        kept, _ = base.kept_tokens([(query, passage)])
        return int(kept[0]) == n
    if hasattr(rr, "pair_ids"):  # a causal LM or seq2seq prompt: the same as with no length limit
        limit, rr.max_length = rr.max_length, 1 << 20
        try:
            whole = rr.pair_ids([(query, passage)])[0]
        finally:
            rr.max_length = limit
        return rr.pair_ids([(query, passage)])[0] == whole
    return n <= rr.document_room(query)  # encoded alone (bi-encoder, ColBERT, MaxSim): within its length


FAMILIES = ["cross_encoder", "bi_encoder", "colbert", "maxsim_demo", "qwen", "t5"]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_local_family_scores_passages_that_reach_it_uncut(name, models):  # noqa: F811
    from rerank_eval.rerankers import bi_encoder, causal_lm, colbert, cross_encoder, maxsim_demo, seq2seq

    make = {
        "cross_encoder": lambda: cross_encoder.CrossEncoderReranker(str(CE_MODEL), max_length=64),
        "bi_encoder": lambda: bi_encoder.BiEncoderReranker(max_length=48),
        "colbert": lambda: colbert.ColBERTReranker(str(SHARED / "models" / "colbert-tiny-pylate")),
        "maxsim_demo": lambda: maxsim_demo.MaxSimDemoReranker(doc_max_length=48),
        "qwen": lambda: causal_lm.CausalLMReranker(
            **config("causal_lm", model=str(models / "qwen"), max_length=320)
        ),
        "t5": lambda: seq2seq.Seq2SeqReranker(**config("seq2seq", model=str(models / "t5"), max_length=64)),
    }
    rr = make[name]()
    query = Query("q", "what is the effect of the drug on blood pressure")
    room = rr.document_room(query.text)
    assert 8 < room < 200
    with pytest.raises(ConfigError, match=f"passage_tokens<={room} "):
        PassageReranker(rr, passage_tokens=room + 1, stride=4).check_queries([query])
    pr = PassageReranker(rr, passage_tokens=room, stride=4)
    pr.check_queries([query])
    doc = Doc("d", LONG[:3000], "A title")
    units, owner = pr.passages([doc])
    assert len(units) > 2 and set(owner.tolist()) == {0}
    assert all(_fits_whole(rr, query.text, u.full_text) for u in units)
    scores = pr.score(query, [doc, Doc("s", "short one")])
    assert (
        scores[0] == max(rr.score(query, units)) and scores[1] == rr.score(query, [Doc("s", "short one")])[0]
    )
