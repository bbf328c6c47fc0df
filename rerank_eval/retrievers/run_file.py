"""Replay of a saved first-stage run (TREC format: ``query_id Q0 doc_id rank score tag``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..datasets import Dataset
from ..errors import ConfigError, DataError
from ..ranking import top_k
from ..types import NO_RESULT, Query, Ranking


def read_trec_run(path: Path) -> dict[str, list[tuple[str, int, float]]]:
    """Parse a TREC run file into ``query_id -> [(doc_id, rank, score)]`` in file order.

    Raises:
        DataError: a missing file, a malformed line, or a document listed twice for one query.
    """
    if not path.is_file():
        raise DataError(f"run file {path} does not exist; pass retriever.path=<TREC run file>")
    out: dict[str, list[tuple[str, int, float]]] = {}
    seen: set[tuple[str, str]] = set()
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 6:
                    raise DataError(
                        f"{path}:{lineno}: expected 6 columns 'qid Q0 docid rank score tag', "
                        f"found {len(parts)}"
                    )
                qid, _, doc_id, rank, score, _ = parts
                try:
                    entry = (doc_id, int(rank), float(score))
                except ValueError:
                    raise DataError(
                        f"{path}:{lineno}: rank {rank!r} or score {score!r} is not a number"
                    ) from None
                if (qid, doc_id) in seen:
                    raise DataError(f"{path}:{lineno}: document {doc_id} is listed twice for query {qid}")
                seen.add((qid, doc_id))
                out.setdefault(qid, [])
                if doc_id != NO_RESULT:  # the harness's line for an empty list
                    out[qid].append(entry)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid UTF-8; is it a TREC run file?") from None
    if not out:
        raise DataError(f"run file {path} is empty")
    return out


class RunFileRetriever:
    """Replays a saved run. Ranked by score descending, ties by the file's rank, then file order.

    Args:
        name: a run shipped with the dataset, read from ``<dataset folder>/runs/<name>.top100.trec``.
        path: any TREC run file; wins over ``name``.
    """

    def __init__(self, name: str | None = None, path: str | None = None):
        if not name and not path:
            raise ConfigError(
                "retriever=run needs retriever.name=<shipped run> or retriever.path=<TREC run file>"
            )
        self.run_name, self.path = name, Path(path).expanduser() if path else None
        # the name says which run: the file's own stem when a path is given (it wins over name)
        self.name = (
            f"run-{self.path.name.removesuffix('.trec').removesuffix('.top100') if self.path else name}"
        )
        self._run: dict[str, list[tuple[str, int, float]]] = {}

    full_corpus = False

    def identity(self, dataset: Dataset) -> str:
        """The run file's content hash: a run edited in place is a different first stage."""
        from ..provenance import file_hash

        path = self._resolve(dataset)
        if not path.is_file():
            raise DataError(f"run file {path} does not exist; pass retriever.path=<TREC run file>")
        return f"run|{file_hash(path)}"

    def _resolve(self, dataset: Dataset) -> Path:
        if self.path is not None:
            return self.path
        folder = getattr(dataset, "path", None)
        runs = Path(folder) / "runs" if folder else None
        if runs is None or not runs.is_dir():
            raise ConfigError(f"dataset {dataset.name} ships no runs; pass retriever.path=<TREC run file>")
        path = runs / f"{self.run_name}.top100.trec"
        if not path.is_file():
            have = sorted(p.name.removesuffix(".top100.trec") for p in runs.glob("*.top100.trec"))
            raise ConfigError(
                f"no shipped run {self.run_name!r} for {dataset.name}; choose retriever.name from {have}"
            )
        return path

    def index(self, dataset: Dataset) -> None:
        path = self._resolve(dataset)
        run = read_trec_run(path)
        known = {q.query_id for q in dataset.queries()}
        unknown = sorted(run.keys() - known)
        if unknown:
            raise DataError(
                f"{path} names {len(unknown)} queries that {dataset.name} lacks, e.g. {unknown[:3]}; "
                "is this run for this dataset and split?"
            )
        dataset.docs(sorted({d for hits in run.values() for d, _, _ in hits}))  # raises on unknown documents
        self._run = {q: sorted(hits, key=lambda h: (-h[2], h[1])) for q, hits in run.items()}

    def retrieve(self, queries: Sequence[Query], k: int) -> Ranking:
        out: Ranking = {}
        for q in queries:
            hits = self._run.get(q.query_id, [])
            out[q.query_id] = top_k([h[0] for h in hits], [h[2] for h in hits], k)
        return out
