"""Writing result files so that a crash never leaves one that looks complete.

Every result file is written to a hidden temporary file beside its target and renamed into place: a reader sees
the whole file or none. A write that fails (a full disk, a read-only folder) removes its temporary file and
raises ``OutputError``, which names the file and says that nothing scored was lost.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from .errors import OutputError


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it when the block completes and removed when it fails."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(
            f"cannot write {path} ({e.strerror or e}); free space or fix permissions and rerun: scores are "
            "cached, so the rerun only writes the results"
        ) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[TextIO]:
    """A text file opened for writing that appears at ``path`` only when the block completes."""
    with _replacing(Path(path)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        yield f


def copy_atomic(src: Path, path: Path) -> None:
    """Copy ``src`` to ``path`` whole or not at all (text or binary)."""
    with _replacing(Path(path)) as tmp:
        shutil.copyfile(src, tmp)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    with atomic_writer(path) as f:
        f.write(text)
