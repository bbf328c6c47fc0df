"""Runtimes: the packed BERT body (a batch is one row of all its sequences' tokens, attention within each sequence:
flash-attention over variable lengths on a GPU, padded attention on a CPU, or per length bucket inside a fixed-size
block under the batch-invariant default, see ``batching``), the attention helpers and the model's own forward's
feeds. The packed runtime is checked against the model's own forward on probe pairs when a model loads."""

from __future__ import annotations

import os

import numpy as np

from .batching import bucket_width


def _is_plain_bert(model) -> bool:
    """A BERT sequence classifier whose forward ``_forward_packed`` reproduces (absolute positions, encoder only,
    the standard pooler and one linear classifier)."""
    cfg = model.config
    return (
        cfg.model_type == "bert"
        and getattr(cfg, "position_embedding_type", "absolute") == "absolute"
        and not getattr(cfg, "is_decoder", False)
        and type(model).__name__ == "BertForSequenceClassification"
        and getattr(model.bert, "pooler", None) is not None
    )


class _PackedBert:
    """A BERT body run over packed rows through the model's own modules and weights: each layer's query, key and
    value projections fused into one matrix multiplication, attention within each sequence (torch's flash kernel
    over variable lengths where ``_varlen_attention`` finds it works, else padded attention)."""

    def __init__(self, torch, bert, device: str, dtype):
        self.torch, self.bert = torch, bert
        self.qkv = [
            (
                torch.cat([a.query.weight, a.key.weight, a.value.weight]),
                torch.cat([a.query.bias, a.key.bias, a.value.bias]),
            )
            for a in (layer.attention.self for layer in bert.encoder.layer)
        ]
        half = device.startswith("cuda") and dtype != torch.float32
        self.varlen = _varlen_attention(torch, device, dtype, bert.config) if half else None

    def __call__(self, tokens, cu, width: int, cu_all=None, groups=None):
        """Last hidden states, one row per token, of a packed row (``tokens``: ids, type ids, sequence and
        position of each token; ``cu``: where each sequence starts; ``width``: the longest). A block (see
        ``_block``) passes ``cu_all`` and ``groups``: attention then runs per sequence at its length bucket."""
        torch, bert = self.torch, self.bert
        ids, types, row, pos = tokens
        x = bert.embeddings(input_ids=ids[None], token_type_ids=types[None], position_ids=pos[None])[0]
        if groups is None:
            attend = _attention(torch, self.varlen, cu, row, pos, width)
        else:
            attend = _block_attention(torch, self.varlen, cu_all, groups, width)
        n, heads = len(ids), bert.config.num_attention_heads
        for layer, (w, b) in zip(bert.encoder.layer, self.qkv, strict=True):
            q, k, v = torch.nn.functional.linear(x, w, b).view(n, 3, heads, -1).unbind(1)
            out = layer.attention.output
            x = out.LayerNorm(out.dense(attend(q, k, v).reshape(n, -1)) + x)
            x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
        return x


def _mean_pooled_bert(st_model):
    """The BertModel of a sentence-transformers model that is exactly a BERT body, mean pooling over all tokens
    and (optionally) normalization, which ``BiEncoder`` runs packed; else None."""
    modules = list(st_model)
    names = [type(m).__name__ for m in modules]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return None
    body = getattr(modules[0], "auto_model", None)
    pooling = modules[1].get_config_dict()
    modes = [
        k for k, v in pooling.items() if k.startswith("pooling_mode_") and v
    ]  # sentence-transformers < 6
    mean = pooling.get("pooling_mode") == "mean" or modes == ["pooling_mode_mean_tokens"]
    plain_body = (
        type(body).__name__ == "BertModel"
        and getattr(body.config, "position_embedding_type", "absolute") == "absolute"
        and not getattr(body.config, "is_decoder", False)
    )
    return body if mean and plain_body and pooling.get("include_prompt", True) else None


def _varlen_attention(torch, device: str, dtype, config):
    """torch's flash-attention over variable-length sequences where this torch and card run it (CUDA, fp16/bf16)
    and it agrees with padded attention on a probe; else None (padded attention is used)."""
    head_dim = config.hidden_size // config.num_attention_heads
    try:
        from torch.nn.attention.varlen import varlen_attn

        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = torch.randn(3, 8, 2, head_dim, device=device, generator=gen).to(dtype).unbind(0)
        cu = torch.tensor([0, 5, 8], dtype=torch.int32, device=device)
        got = varlen_attn(q, k, v, cu, cu, 5, 5)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        want = torch.cat(
            [sdpa(*(x[a:b].transpose(0, 1) for x in (q, k, v))).transpose(0, 1) for a, b in ((0, 5), (5, 8))]
        )
        if (got.float() - want.float()).abs().max().item() < 1e-2:
            return varlen_attn
    except Exception:  # an older torch, or a card its flash attention does not support
        pass
    return None


def _attention(torch, varlen, cu, row, pos, width: int):
    """Self-attention within each pair of a packed row (``width``: the longest pair): ``attend(q, k, v)`` on
    (tokens, heads, dim) tensors."""
    if varlen is not None:
        cu32 = cu.to(torch.int32)
        return lambda q, k, v: varlen(q, k, v, cu32, cu32, width, width)
    lengths = cu[1:] - cu[:-1]
    keep = (torch.arange(width, device=cu.device)[None, :] < lengths[:, None])[:, None, None, :]

    def padded(q, k, v):
        shape = (len(lengths), width, *q.shape[1:])
        qkv = [q.new_zeros(shape).index_put_((row, pos), x).transpose(1, 2) for x in (q, k, v)]
        out = torch.nn.functional.scaled_dot_product_attention(*qkv, attn_mask=keep)
        return out.transpose(1, 2)[row, pos]

    return padded


def _block(tokens: np.ndarray, cu: np.ndarray, size: int, pad_id: int) -> dict:
    """The packed runtime's inputs for a block: ``tokens`` filled with padding to ``size`` (ids ``pad_id``,
    positions 0, its own sequence), ``cu_all`` (the offsets including the padding's), ``width`` (the longest
    sequence, the padding counted) and the attention ``groups``: for each length bucket of the row's sequences,
    the token index of each (sequence, slot) padded to the bucket's width and which slots are real."""
    n, lengths = tokens.shape[1], np.diff(cu)
    block = np.zeros((4, size), dtype=np.int64)
    block[:, :n] = tokens
    block[0, n:], block[2, n:] = pad_id, len(lengths)
    cu_all = np.append(cu, size) if n < size else cu
    widths = np.array([bucket_width(k) for k in lengths.tolist()], dtype=np.int64)
    groups = []
    for width in sorted(set(widths.tolist())):
        seqs = np.flatnonzero(widths == width)
        slots = np.arange(width)[None, :]
        keep = slots < lengths[seqs][:, None]
        groups.append((np.where(keep, cu[seqs][:, None] + slots, 0), keep))
    return {"tokens": block, "cu_all": cu_all, "width": int(np.diff(cu_all).max()), "groups": groups}


def _block_attention(torch, varlen, cu_all, groups, width: int):
    """Self-attention within each sequence of a block (``_block``): flash attention over variable lengths where
    the device has it (per sequence by construction), else one padded call per length bucket; padding rows get
    zeros."""
    if varlen is not None:
        cu32 = cu_all.to(torch.int32)
        return lambda q, k, v: varlen(q, k, v, cu32, cu32, width, width)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def bucketed(q, k, v):
        out = q.new_zeros(q.shape)
        for where, keep in groups:
            o = sdpa(*(x[where].transpose(1, 2) for x in (q, k, v)), attn_mask=keep[:, None, None, :])
            out[where[keep]] = o.transpose(1, 2)[keep]
        return out

    return bucketed


def _to_device(torch, array, device: str):
    if isinstance(array, list | tuple):
        return type(array)(_to_device(torch, a, device) for a in array)
    if not isinstance(array, np.ndarray):
        return array
    t = torch.from_numpy(array)
    if device.startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t


def _progress(total: int, enabled: bool, desc: str, unit: str = "pair"):
    if not enabled or os.environ.get("RERANK_EVAL_NO_PROGRESS"):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)
