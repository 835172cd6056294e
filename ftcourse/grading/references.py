"""Cached references: the base model's scores, the same for every learner, computed once.

A reference of a held-out split is signed with a key derived from the instructor's secret: an entry that
anybody else wrote (a learner's process, a stale file) does not verify and is recomputed, never trusted.
References of public splits (the learner's self-check) are unsigned. The grader keeps its references in
its own cache (`$FTCOURSE_REFERENCES`, under the grading folder when `make grade` runs as root, where the
learner user cannot write).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from . import secret as secrets_

REFERENCES_ENV = "FTCOURSE_REFERENCES"


def references_dir() -> Path:
    """`$FTCOURSE_REFERENCES`, else `references/` in the model cache."""
    from ..models import cache_root

    folder = Path(os.environ.get(REFERENCES_ENV) or cache_root() / "references")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def cached(name: str, key_parts: list, compute: Callable[[], dict], secret: int | None = None) -> dict:
    """`compute()`'s result, cached under the hash of `key_parts`; signed and verified when `secret` is given."""
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:16]
    path = references_dir() / f"{name}{'_signed' if secret is not None else ''}_{key}.json"
    if path.is_file() and not path.is_symlink():
        try:
            entry = json.loads(path.read_text())
            value = entry["value"]
            if secret is None or secrets_.verify(_canonical(value), entry.get("mac", ""), secret):
                return value
        except (ValueError, KeyError, TypeError, OSError):
            pass  # unreadable or unsigned: recompute
    value = compute()
    entry = {"value": value, "mac": secrets_.sign(_canonical(value), secret) if secret is not None else None}
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entry))
    os.replace(tmp, path)
    return value
