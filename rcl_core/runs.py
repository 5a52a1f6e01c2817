"""The run directory on disk: atomic writes and reading ``metrics.jsonl`` back.

Everything a run writes goes through :func:`atomic_write`, so a reader (the report, a resumed run, a
notebook) never sees half a file, and a killed process leaves the previous version in place.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO


def atomic_write(path: str | Path, write: Callable[[IO], None], mode: str = "wb") -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it onto ``path``."""
    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a directory; give a file path to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; run files are meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text), mode="w")


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_metrics(path: str | Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Parse a ``metrics.jsonl`` into its records (training lines and ``{"event": ...}`` lines, in order).

    Lines that are not a JSON object are skipped, not raised: a run killed mid-write leaves a partial
    last line, and a resumed run appends after it, so a broken line can sit mid-file too. When ``notes``
    is a list, a sentence saying what was skipped is appended to it. A missing file reads as no records.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records: list[dict[str, Any]] = []
    bad: list[int] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad.append(lineno)
    if bad and notes is not None:
        last = max((i for i, ln in enumerate(lines, start=1) if ln.strip()), default=0)
        where = "the partial last line" if bad == [last] else f"unparsable line(s) {bad[:10]}"
        notes.append(f"{path.name}: skipped {where}")
    return records
