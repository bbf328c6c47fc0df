"""How many threads a job's torch, OpenMP and MKL work gets (``threads``).

``auto`` (the default) gives the job the cores that other processes leave idle, measured when the job starts: on
this 2-core CPU a cross-encoder job beside another busy process ran 17x slower on every core than on one (torch's
threads wait on each other while the other process holds a core), and alone it ran 1.5x faster on both cores than
on one (README, "Threads"). Scores do not depend on the thread count (``tests/test_invariance.py``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger("rerank_eval")
STAT = Path("/proc/stat")


def auto_threads(cores: int, busy: float) -> int:
    """The cores that ``busy`` cores' worth of other work leaves idle, rounded, at least one."""
    return max(1, cores - round(busy))


def busy_cores(window_s: float = 0.1) -> tuple[int, float] | None:
    """(cores this process may run on, how many of them other processes keep busy over ``window_s``), from
    ``/proc/stat``'s per-core counters less this process's own CPU time; None where there is no ``/proc/stat``."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    first = _ticks(cores)
    if not cores or first is None:
        return None
    own, t0 = time.process_time(), time.perf_counter()
    time.sleep(window_s)
    second, own = _ticks(cores), time.process_time() - own
    elapsed = time.perf_counter() - t0
    if second is None:
        return None
    busy = sum(b1 - b0 for (b0, _), (b1, _) in zip(first, second, strict=True))
    total = sum(t1 - t0 for (_, t0), (_, t1) in zip(first, second, strict=True))
    if total <= 0:
        return None
    others = busy / total * len(cores) - own / elapsed
    return len(cores), max(others, 0.0)


def _ticks(cores: list[int]) -> list[tuple[int, int]] | None:
    """(busy, total) clock ticks of each of ``cores`` so far."""
    try:
        lines = STAT.read_text().splitlines()
    except OSError:
        return None
    rows = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            values = [int(v) for v in fields]
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle and iowait
            rows[int(name[3:])] = (sum(values[:8]) - idle, sum(values[:8]))
    if not all(c in rows for c in cores):
        return None
    return [rows[c] for c in cores]


def resolve_threads(threads: int | str | None) -> int | None:
    """The thread count a job runs on: a number as given, None as it is (torch's own default), ``auto`` from
    ``busy_cores``: None (torch's own default) where no other process is busy or nothing can be measured, else the
    cores left idle."""
    if threads != "auto":
        return threads
    found = busy_cores()
    if found is None:
        return None
    cores, busy = found
    chosen = auto_threads(cores, busy)
    if chosen == cores:
        return None
    log.info("threads=auto: %d of %d cores (other processes keep %.1f busy)", chosen, cores, busy)
    return chosen
