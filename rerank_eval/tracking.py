"""MLflow: one run per job with params (the resolved config, secrets redacted), metrics, tags and artifacts.

The default store is ``sqlite:///<project>/mlruns.db`` with artifacts in ``<project>/mlartifacts``;
``MLFLOW_TRACKING_URI`` overrides it (a shared server, or a test's temporary store).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from .errors import ConfigError, OutputError
from .provenance import ENVIRONMENT_LIBRARIES, library_versions

PACKAGE_DIR = Path(__file__).resolve().parent  # for the git commit of a checkout, never for outputs
PACKAGES = ("rerank-eval", *ENVIRONMENT_LIBRARIES, "mlflow", "hydra-core")


def default_uri() -> str:
    from .paths import mlflow_uri

    return mlflow_uri()


@functools.cache
def git_commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = (
            subprocess.run(  # no optional locks: a job killed mid-call must leave no .git/index.lock behind
                ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                cwd=PACKAGE_DIR,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}{'-dirty' if dirty else ''}" if sha else "unknown"


@functools.cache
def package_versions() -> dict[str, str]:
    return {f"version.{k}": v for k, v in library_versions(PACKAGES).items()}


def _check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s)
    except urllib.error.HTTPError:
        pass  # it answered: a server without /health, or behind auth, is still there
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(
            f"the MLflow tracking server {uri} does not answer ({reason}); start it, fix "
            "MLFLOW_TRACKING_URI, or set mlflow.enabled=false"
        ) from None


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (plain or ``file:...?options`` form), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?")[0].removeprefix("file:"))


def _create_sqlite_store(uri: str) -> None:
    """Create a new SQLite store whole or not at all. MLflow builds its schema in many statements; a process
    killed half-way would leave a store that every later run refuses ("table ... already exists"). So the
    schema is built in a temporary file beside the store and hard-linked into place (a parallel worker that
    got there first wins; its store is used as it is)."""
    db = _sqlite_file(uri)
    if (
        db is None or "?" in uri or db.exists()
    ):  # not SQLite, opened with options (read-only), or there already
        return
    import mlflow

    db.parent.mkdir(parents=True, exist_ok=True)
    for stale in db.parent.glob(f".{db.name}.*.init"):  # left by a process killed while it built one
        pid = stale.name.removeprefix(f".{db.name}.").removesuffix(".init")
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = db.with_name(f".{db.name}.{os.getpid()}.init")
    tmp.unlink(missing_ok=True)
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()  # builds the schema
    try:
        os.link(tmp, db)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


_TRACKERS: dict[tuple[str, str], Tracker] = {}


def tracker_for(experiment: str, uri: str | None = None) -> Tracker:
    """One Tracker per (experiment, store) and process: a sweep's jobs share its client."""
    key = (experiment, uri or default_uri())
    if key not in _TRACKERS:
        _TRACKERS[key] = Tracker(experiment, uri)
    return _TRACKERS[key]


class Tracker:
    """Logs jobs to one MLflow experiment.

    Args:
        experiment: the MLflow experiment name.
        uri: the tracking URI (default: ``MLFLOW_TRACKING_URI``, else the project's SQLite store).
    """

    def __init__(self, experiment: str = "rerank-eval", uri: str | None = None):
        import mlflow

        for name in ("alembic", "mlflow.tracking.fluent"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # it logs a store failure with its traceback before raising it; the raised error is reported in one line
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        self.uri = uri or default_uri()
        _check_reachable(self.uri)
        _create_sqlite_store(self.uri)
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                db = _sqlite_file(self.uri)  # artifacts beside the database, not in the cwd
                location = (db.resolve().parent / "mlartifacts").as_uri() if db is not None else None
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            else:
                self.experiment_id = exp.experiment_id
            # a write now, so that a read-only store fails before the scoring, not after it
            self.client.set_experiment_tag(self.experiment_id, "rerank_eval.store_checked", "writable")
        except Exception as e:  # MLflow raises many types for an unreachable or read-only store
            raise ConfigError(
                f"cannot use the MLflow store {self.uri} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}); set MLFLOW_TRACKING_URI to a reachable, writable store"
            ) from e
        self.experiment = experiment

    def start_run(
        self,
        name: str,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        start_time: float | None = None,
    ) -> str:
        """Open a run (a sweep's or study's parent, or a job) and return its id; ``start_time`` is in epoch
        seconds (default: now)."""
        all_tags = {"mlflow.runName": name, "git_commit": git_commit(), **package_versions(), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        start_ms = int(start_time * 1000) if start_time is not None else None
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags, start_time=start_ms)
        return run.info.run_id

    def log(
        self,
        run_id: str,
        params: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        artifacts: list[Path] | None = None,
        steps: Mapping[str, Mapping[int, float]] | None = None,
    ) -> None:
        """Log params, metrics, tags and artifact files or folders (missing paths are skipped). ``steps`` logs a
        curve as one metric's history (e.g. ``recall_curve`` with the cutoff k as the step)."""
        import time

        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        items = [Param(k[:250], str(v)[:6000]) for k, v in (params or {}).items()]
        for start in range(0, len(items), 90):
            self.client.log_batch(run_id, params=items[start : start + 90])
        mets = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        mets += [
            Metric(k, float(v), now, int(step))
            for k, curve in (steps or {}).items()
            for step, v in curve.items()
        ]
        for start in range(0, len(mets), 900):
            self.client.log_batch(run_id, metrics=mets[start : start + 900])
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])
        for path in artifacts or []:
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(run_id, str(path))

    def finish(self, run_id: str, ok: bool = True) -> None:
        self.client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")

    def find_finished(self, fingerprint: str) -> str | None:
        """The newest finished run of this experiment with this fingerprint, or None."""
        runs = self.client.search_runs(
            [self.experiment_id],
            max_results=1,
            order_by=["attributes.start_time DESC"],
            filter_string=f"tags.fingerprint = '{fingerprint}' and attributes.status = 'FINISHED'",
        )
        return runs[0].info.run_id if runs else None

    def log_dataset(self, run_id: str, name: str, digest: str, source: str, context: str) -> None:
        """The run's MLflow dataset input (what ``mlflow.log_input`` logs): the collection's content hash as its
        digest, its ir_datasets id (``irds:<id>``) or folder as its source."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        irds = source.startswith("irds:")
        entity = Dataset(
            name=name,
            digest=digest[:36],
            source_type="ir_datasets" if irds else "local",
            source=json.dumps({"id": source.removeprefix("irds:")} if irds else {"uri": source}),
        )
        inputs = [DatasetInput(entity, [InputTag("mlflow.data.context", context)])]
        try:
            self.client.log_inputs(run_id, inputs)
        except Exception as e:  # noqa: BLE001 - MLflow's type differs by store; the retry decides
            if "UNIQUE constraint" not in str(e) and "duplicate key" not in str(e):
                raise
            # parallel jobs of a sweep: MLflow looks the dataset up, then inserts it, so a job that logs the
            # same new dataset at the same moment loses the insert; the row is there now and the retry uses it
            self.client.log_inputs(run_id, inputs)

    def log_reused(self, run_id: str, parent_run_id: str) -> str:
        """A child of ``parent_run_id`` standing for the finished run ``run_id`` that a resumed sweep reused: its
        params, metrics and tags (not its fingerprint: resuming finds the original) and ``reused_from``, so the
        parent lists every job of the sweep. Its files stay with the original run."""
        old = self.client.get_run(run_id)
        tags = {k: v for k, v in old.data.tags.items() if not k.startswith("mlflow.") and k != "fingerprint"}
        new = self.start_run(old.info.run_name, {**tags, "reused_from": run_id}, parent_run_id)
        self.log(new, params=old.data.params, metrics=old.data.metrics)
        if old.inputs and old.inputs.dataset_inputs:
            self.client.log_inputs(new, list(old.inputs.dataset_inputs))
        self.finish(new)
        return new

    def close_stale(self, fingerprint: str) -> int:
        """Mark runs of this fingerprint that a killed process left RUNNING as KILLED; returns how many."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.fingerprint = '{fingerprint}' and attributes.status = 'RUNNING'",
        )
        for run in runs:
            self.client.set_terminated(run.info.run_id, status="KILLED")
        return len(runs)

    def download(self, run_id: str, names: list[str], dest: Path) -> None:
        """Fetch a run's artifacts into ``dest`` (each file renamed into place whole)."""
        import tempfile

        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            for name in names:
                got = self.client.download_artifacts(run_id, name, tmp)
                os.replace(got, dest / name)

    def log_job(
        self,
        name: str,
        params: Mapping[str, str],
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
        artifacts: list[Path],
        parent_run_id: str | None = None,
        steps: Mapping[str, Mapping[int, float]] | None = None,
        start_time: float | None = None,
        dataset: Mapping[str, str] | None = None,
    ) -> str:
        """Create one finished run holding a job's results (started when the job did) and return its id.
        ``dataset`` (name, digest, source, context) is logged as the run's MLflow dataset input, so that the UI's
        dataset column and filters show it.

        Raises:
            OutputError: the store failed part-way; the run is marked FAILED where the store still answers.
        """
        try:
            run_id = self.start_run(name, tags, parent_run_id, start_time)
        except Exception as e:
            raise self._store_error(e) from None
        try:
            if dataset:
                self.log_dataset(run_id, **dataset)
            self.log(run_id, params, metrics, None, artifacts, steps)
        except BaseException as e:
            with contextlib.suppress(Exception):
                self.finish(run_id, ok=False)
            if isinstance(e, Exception):
                raise self._store_error(e) from None
            raise
        self.finish(run_id)
        return run_id

    def _store_error(self, e: Exception) -> OutputError:
        return OutputError(
            f"logging to the MLflow store {self.uri} failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "the job's files are in its output folder and its scores are cached: fix the store and rerun"
        )


@contextlib.contextmanager
def local_server(store_uri: str, artifacts: Path | None = None, timeout_s: float = 60.0):
    """A real ``mlflow server`` on a free loopback port for the duration of the block; yields its URL.

    Raises:
        RuntimeError: the server did not answer its health check in time.
    """
    import signal
    import socket
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        store_uri,
        "--workers",
        "1",
    ]
    if artifacts is not None:
        cmd += ["--artifacts-destination", str(artifacts)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"mlflow server for {store_uri} did not come up") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
