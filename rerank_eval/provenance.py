"""Where a figure comes from: content hashes of data and run files, model identity (weights, or the hub revision),
the code version, and the job fingerprint built from all of them.

A result is reused only when nothing that could change it changed, so every ingredient is hashed by content, never
by name or modification time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model", ".pt")


def _hash_file(h, path: Path) -> None:
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)


@functools.cache
def _file_hash_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    _hash_file(h, Path(path))
    return h.hexdigest()[:16]


def file_hash(path: str | Path) -> str:
    """A short sha256 of a file's bytes (memoized per process while size and mtime stay the same)."""
    p = Path(path).resolve()
    st = p.stat()
    return _file_hash_cached(str(p), st.st_size, st.st_mtime_ns)


def folder_hash(path: str | Path, suffixes: tuple[str, ...] = WEIGHT_SUFFIXES) -> str:
    """A short sha256 over the names and bytes of a folder's files with these suffixes (sorted, recursive)."""
    p = Path(path)
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")):
        if f.is_file() and f.suffix in suffixes:
            h.update(str(f.relative_to(p)).encode())
            h.update(file_hash(f).encode())
    return h.hexdigest()[:16]


def hub_snapshot(model_id: str, revision: str | None = None) -> Path | None:
    """The local snapshot folder of a Hugging Face hub model (its name is the commit hash), without the network;
    None when the hub cache does not hold it."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, revision=revision, local_files_only=True))
    except Exception:  # not cached, not a hub id, or huggingface_hub missing
        return None


def model_identity(resolved: str, revision: str | None = None) -> str:
    """What a model's scores depend on: the hash of a local folder's weight and config files; for a hub id, the
    same hash of the cached snapshot with the commit it came from (``id@commit#hash``). A hub id that is not in
    the cache (it has not been loaded yet) is named with the revision asked for. Not memoized: files rewritten
    in place (a model trained again into the same folder) change it within one process too; each file's hash is
    memoized while its size and modification time stay the same."""
    p = Path(resolved)
    if p.is_dir():
        return folder_hash(p)
    snap = hub_snapshot(resolved, revision)
    if snap is not None:
        return f"{resolved}@{snap.name}#{folder_hash(snap)}"
    return f"{resolved}@{revision or 'main'}"


@functools.cache
def code_version() -> str:
    """The package version and a hash of its own source and config files: what the git commit stands for, exact
    also for an uncommitted change or an installed wheel."""
    try:
        version = metadata.version("rerank-eval")
    except metadata.PackageNotFoundError:
        version = "0"
    h = hashlib.sha256()
    for f in sorted(PACKAGE_DIR.rglob("*")):  # the configs ship inside the package
        if f.is_file() and f.suffix in (".py", ".yaml") and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(PACKAGE_DIR.parent)).encode())
            h.update(f.read_bytes())
    return f"{version}+{h.hexdigest()[:12]}"


def scoring_code(*modules: str) -> str:
    """A hash of the source files that compute a reranker's scores (``scoring/cross_encoder``, ``rerankers/cohere``...): part
    of every score-cache key, so a change to the scoring code never serves scores the old code computed."""
    h = hashlib.sha256()
    for m in modules:
        h.update((PACKAGE_DIR / f"{m}.py").read_bytes())
    return h.hexdigest()[:10]


def device_name(device: str = "cpu") -> str:
    """The hardware a latency was measured on: the GPU's name, or the CPU model and the threads torch uses."""
    try:
        import torch

        if device.startswith("cuda") and torch.cuda.is_available():
            return f"cuda:{torch.cuda.get_device_name(torch.device(device))}"
        threads = torch.get_num_threads()
    except Exception:
        threads = os.cpu_count() or 1
    model = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({threads} threads)"


LOCAL_MODEL_LIBRARIES = ("torch", "transformers", "tokenizers", "sentence-transformers", "numpy")
"""What a local model's scores depend on besides its files and settings: each can move a score by changing a
kernel, a default, or how a pair is cut."""
ENVIRONMENT_LIBRARIES = (
    *LOCAL_MODEL_LIBRARIES,
    *("faiss-cpu", "faiss-gpu", "bm25s", "PyStemmer", "rank-bm25", "ir-datasets", "ranx", "scipy"),
    *("cohere", "voyageai", "mixedbread", "anthropic", "openai", "httpx"),
)
"""Every library that can change a score, a ranking or a request: the job fingerprint and every run hold them."""


def library_versions(names: tuple[str, ...]) -> dict[str, str]:
    """The installed version of each named distribution (absent ones left out); numpy's with its BLAS."""
    out = {}
    for name in names:
        version = installed_version(name)
        if version is None:
            continue
        out[name] = version
        if name == "numpy":
            out[name] += f"+{numpy_blas()}"
    return out


def installed_version(name: str) -> str | None:
    """A distribution's installed version, None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def numpy_blas() -> str:
    """The BLAS numpy was built with, and its version (``openblas-0.3.31``): matrix products depend on it."""
    try:
        import numpy as np

        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')}-{blas.get('version', '?')}"
    except Exception:  # numpy < 1.26 has no dict form
        return "blas-unknown"


def environment(names: tuple[str, ...] = LOCAL_MODEL_LIBRARIES, device: str | None = None) -> str:
    """``name=version`` of the libraries a figure depends on, and the device kind it ran on (``cpu:<model>``,
    ``cuda:<card>``): part of score-cache keys, saved-index keys and job fingerprints, so an upgrade or another
    device computes afresh instead of serving what the old one computed."""
    parts = [f"{k}={v}" for k, v in library_versions(names).items()]
    if device is not None:
        parts.append(f"device={device_kind(device)}")
    return ",".join(parts)


@functools.cache
def device_kind(device: str) -> str:
    """The hardware that computes a score, without the thread count (which must not change a score)."""
    if device.startswith("cuda"):
        return device_name(device)
    return "cpu:" + device_name("cpu").rsplit(" (", 1)[0]


def fingerprint(config: Mapping, ingredients: Mapping[str, str]) -> str:
    """A stable hash of what makes two jobs the same job: the resolved config (less the keys that cannot change
    results) and the content identities of everything else (data files, run file, model, endpoint, code)."""
    core = {k: v for k, v in config.items() if k not in VOLATILE}
    blob = json.dumps([core, dict(sorted(ingredients.items()))], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


VOLATILE = ("progress", "mlflow", "cache", "resume")  # config keys that do not change a job's results
