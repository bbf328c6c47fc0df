"""Local LLM rerankers against their model cards' recipes, on tiny random-weight Qwen3, Gemma and T5 models built
here with small tokenizers that have the needed special tokens: the prompt's token ids equal the recipe's, and
the scores equal the recipe's own step-by-step computation (within 1e-4), truncation included. The recipes below
are written out as each model card gives them (Qwen3-Reranker, bge-reranker-v2-gemma, pygaggle's monoT5)."""

import json

import numpy as np
import pytest
import torch
from conftest import SHARED
from omegaconf import OmegaConf

from rerank_eval.config import conf_dir
from rerank_eval.errors import BackendUnavailableError, ConfigError
from rerank_eval.rerankers.causal_lm import CausalLMReranker
from rerank_eval.rerankers.seq2seq import Seq2SeqReranker
from rerank_eval.scoring.passages import split_long_docs
from rerank_eval.types import Doc, Query

ROWS = [
    json.loads(line)
    for line in (SHARED / "models" / "colbert-tiny-pylate" / "reference_scores.jsonl")
    .read_text()
    .splitlines()
]
QUERIES = {r["query_id"]: r["query"] for r in ROWS}
LONG = " ".join(r["text"] for r in ROWS[:40])  # past every budget below
PAIRS = [(r["query"], r["text"]) for r in ROWS[:12]] + [(ROWS[0]["query"], LONG), (LONG[:3000], "short one")]


def tokenizer(kind, specials, **named):
    """A small BPE tokenizer trained on DL19 text and the prompts: byte-level like Qwen's, or with sentencepiece's
    ``▁`` word marks (without Gemma's dummy prefix, with T5's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=named.get("unk_token")))
    if kind == "byte":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always" if kind == "t5" else "never")
        tok.decoder = decoders.Metaspace()
        alphabet = sorted(set("".join(QUERIES.values()) + LONG + "'\"?.:-\n"))
    words = ['"yes" "no"', "Yes", "No", "yes no", "true false", "Relevant: true", "Relevant: false"] * 50
    corpus = list(QUERIES.values()) + [r["text"] for r in ROWS] + words + [PROMPTS]
    tok.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=900, special_tokens=specials, initial_alphabet=alphabet)
    )
    if kind == "t5":
        eos = tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


PROMPTS = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that "
    'the answer can only be "yes" or "no". <Instruct>: <Query>: <Document>: Given a web search query, '
    "retrieve relevant passages that answer the query. A: B: Given a query A and a passage B, determine whether "
    "the passage contains an answer to the query by providing a prediction of either 'Yes' or 'No'. Query: "
    "Document: Relevant:"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import (
        GemmaConfig,
        GemmaForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    root = tmp_path_factory.mktemp("tiny_llms")
    torch.manual_seed(0)
    qwen_tok = tokenizer(
        "byte",
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
    )
    gemma_tok = tokenizer(
        "sp",
        ["<pad>", "<eos>", "<bos>", "<unk>"],
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )
    t5_tok = tokenizer(
        "t5", ["<pad>", "</s>", "<unk>"], pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    small = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "head_dim": 8,
        "max_position_embeddings": 2048,
        "initializer_range": 0.3,
    }
    built = {
        "qwen": (
            Qwen3ForCausalLM(Qwen3Config(vocab_size=len(qwen_tok), num_key_value_heads=2, **small)),
            qwen_tok,
        ),
        "gemma": (
            GemmaForCausalLM(
                GemmaConfig(
                    vocab_size=len(gemma_tok),
                    num_key_value_heads=1,
                    bos_token_id=2,
                    pad_token_id=0,
                    eos_token_id=1,
                    **small,
                )
            ),
            gemma_tok,
        ),
        "t5": (
            T5ForConditionalGeneration(
                T5Config(
                    vocab_size=len(t5_tok),
                    d_model=32,
                    d_ff=64,
                    d_kv=8,
                    num_layers=2,
                    num_heads=4,
                    decoder_start_token_id=0,
                    pad_token_id=0,
                    eos_token_id=1,
                    initializer_factor=8.0,
                )
            ),
            t5_tok,
        ),
    }
    for name, (model, tok) in built.items():
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root


def config(name, **overrides):
    cfg = OmegaConf.load(conf_dir() / "reranker" / f"{name}.yaml")
    if "defaults" in cfg:
        base = OmegaConf.load(conf_dir() / "reranker" / "causal_lm.yaml")
        cfg = OmegaConf.merge(base, {k: v for k, v in cfg.items() if k != "defaults"})
    args = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"}
    return {**split_long_docs(args)[0], **overrides}  # the document policy is the config layer's, not theirs


def ours(reranker, pairs):
    """Scores through the reranker's own entry point, one query at a time as the pipeline calls it."""
    out = []
    for q, d in pairs:
        out += reranker.score(Query("q", q), [Doc("d", d)])
    return np.array(out)


def qwen_recipe(folder, pairs, instruction, max_length):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
        'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_ids = tok.encode(prefix, add_special_tokens=False)
    suffix_ids = tok.encode(suffix, add_special_tokens=False)
    texts = [f"<Instruct>: {instruction}\n<Query>: {q}\n<Document>: {d}" for q, d in pairs]
    inputs = tok(
        texts,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix_ids) - len(suffix_ids),
    )
    for i, ele in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix_ids + ele + suffix_ids
    ids = [list(x) for x in inputs["input_ids"]]
    batch = tok.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
    with torch.no_grad():
        last = model(**batch).logits[:, -1, :]
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    scores = torch.nn.functional.log_softmax(torch.stack([last[:, no], last[:, yes]], dim=1), dim=1)
    return ids, scores[:, 1].exp().numpy()


def gemma_recipe(folder, pairs, max_length=1024):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = (
        "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
        "providing a prediction of either 'Yes' or 'No'."
    )
    prompt_ids = tok(prompt, return_tensors=None, add_special_tokens=False)["input_ids"]
    sep_ids = tok("\n", return_tensors=None, add_special_tokens=False)["input_ids"]
    items = []
    for q, p in pairs:
        q_ids = tok(
            f"A: {q}",
            return_tensors=None,
            add_special_tokens=False,
            max_length=max_length * 3 // 4,
            truncation=True,
        )["input_ids"]
        p_ids = tok(
            f"B: {p}", return_tensors=None, add_special_tokens=False, max_length=max_length, truncation=True
        )["input_ids"]
        # tok.prepare_for_model(first, second, truncation="only_second", max_length=max_length, padding=False,
        # add_special_tokens=False) in the card (transformers 4; 5 has no prepare_for_model): the second sequence
        # loses its last tokens until both fit
        first, second = [tok.bos_token_id] + q_ids, sep_ids + p_ids
        item = {"input_ids": first + second[: max(0, max_length - len(first))]}
        item["input_ids"] = item["input_ids"] + sep_ids + prompt_ids
        item["attention_mask"] = [1] * len(item["input_ids"])
        items.append(item)
    ids = [list(i["input_ids"]) for i in items]
    batch = tok.pad(
        items,
        padding=True,
        max_length=max_length + len(sep_ids) + len(prompt_ids),
        pad_to_multiple_of=8,
        return_tensors="pt",
    )
    yes_loc = tok("Yes", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        scores = model(**batch, return_dict=True).logits[:, -1, yes_loc].view(-1).float()
    return ids, scores.numpy()


def monot5_recipe(folder, pairs):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    texts = [f"Query: {q} Document: {d} Relevant:" for q, d in pairs]
    ids = [list(x) for x in tok(texts, max_length=512, truncation=True)["input_ids"]]
    false_id, true_id = tok.get_vocab()["▁false"], tok.get_vocab()["▁true"]
    start = torch.full((1, 1), model.config.decoder_start_token_id, dtype=torch.long)
    scores = []
    # one text a forward, the recipe otherwise as written: a right-padded batch of this random T5 (log-odds up
    # to ~90) moves scores by ~4e-4 with the batch's shape and the kernels' version, which is not what is tested
    for text in texts:
        enc = tok([text], max_length=512, truncation=True, padding="longest", return_tensors="pt")
        with torch.no_grad():
            logits = model(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], decoder_input_ids=start
            ).logits[:, 0]
        scores.append(torch.nn.functional.log_softmax(logits[:, [false_id, true_id]], dim=1)[0, 1])
    return ids, torch.stack(scores).numpy()


@pytest.mark.parametrize("max_length", [8192, 160])
def test_qwen3_reranker_template_equals_the_model_cards_recipe(models, max_length):
    rr = CausalLMReranker(**config("causal_lm", model=str(models / "qwen"), max_length=max_length))
    want_ids, want = qwen_recipe(models / "qwen", PAIRS, rr.instruction, max_length)
    assert rr.pair_ids(PAIRS) == want_ids
    if max_length == 160:
        assert max(map(len, want_ids)) == 160  # truncation was exercised
    got = ours(rr, PAIRS)
    assert np.abs(1 / (1 + np.exp(-got)) - want).max() < 1e-4  # p(yes) is the sigmoid of the log-odds
    assert np.ptp(got) > 0.1  # the scores differ: the comparison means something


def test_bge_reranker_v2_gemma_layout_equals_the_model_cards_recipe(models):
    rr = CausalLMReranker(**config("causal_lm_gemma", model=str(models / "gemma")))
    want_ids, want = gemma_recipe(models / "gemma", PAIRS)
    got_ids = rr.pair_ids(PAIRS)
    assert got_ids == want_ids and got_ids[0][0] == rr.lm.tokenizer.bos_token_id
    assert max(map(len, want_ids)) > 1024  # the passage cut to fit 1024 with the query, the prompt after
    got = ours(rr, PAIRS)
    assert np.abs(got - want).max() < 1e-4 and np.ptp(got) > 0.1


def test_monot5_equals_pygaggles_recipe(models):
    rr = Seq2SeqReranker(**config("seq2seq", model=str(models / "t5")))
    want_ids, want = monot5_recipe(models / "t5", PAIRS)
    assert rr.pair_ids(PAIRS) == want_ids and max(map(len, want_ids)) == 512
    got = ours(
        rr, PAIRS
    )  # padded to its length bucket: the random model's logits (up to ~90) round differently
    scale = np.abs(got).max()  # fp32 rounding relative to the largest logit
    assert np.abs(torch.nn.functional.logsigmoid(torch.from_numpy(got)).numpy() - want).max() < 1e-5 * scale
    assert np.ptp(got) > 0.1


def test_batched_scoring_moves_only_by_rounding_and_identities_differ(models):
    kwargs = config("causal_lm", model=str(models / "qwen"), max_length=160)
    one = CausalLMReranker(**kwargs)
    many = CausalLMReranker(**{**kwargs, "batch_invariant": False})
    docs = [Doc(str(i), d) for i, (_, d) in enumerate(PAIRS)]
    a = np.array(one.score(Query("q", PAIRS[0][0]), docs))
    b = np.array(many.score(Query("q", PAIRS[0][0]), docs))  # left-padded batches
    assert np.abs(a - b).max() < 1e-4 and many.name.endswith("-batched")
    assert len({one.identity, many.identity}) == 2
    other = CausalLMReranker(**{**kwargs, "instruction": "Find the passage"})
    assert other.identity != one.identity  # the prompt is part of the score cache's key


def test_a_checkpoint_of_another_kind_or_a_missing_token_is_refused(models):
    with pytest.raises(ConfigError, match="not a \\*ForCausalLM one"):
        CausalLMReranker(**config("causal_lm", model=str(models / "t5")))
    with pytest.raises(ConfigError, match="not a \\*ForConditionalGeneration one"):
        Seq2SeqReranker(**config("seq2seq", model=str(SHARED / "models" / "scifact-minilm-l6-ce")))
    with pytest.raises(ConfigError, match="has no token 'oui'"):
        CausalLMReranker(**config("causal_lm", model=str(models / "qwen"), answer_tokens=["oui", "no"]))
    with pytest.raises(ConfigError, match="unknown fields \\['passage'\\]"):
        CausalLMReranker(**config("causal_lm", model=str(models / "qwen"), prompt=["{query} {passage}"]))
    with pytest.raises(BackendUnavailableError, match="does not exist"):
        Seq2SeqReranker(model="./no/such/monot5")
