"""The artifacts contract: what an outcome exercise saves, where, and how a grader reads it safely.

An exercise saves to `artifacts/<notebook>/` beside the notebook: `adapter/` (PEFT's files and the
tokenizer), `training.json` (the run's record) and, per exercise, `plan.json` (01), `task.py` and
`train.jsonl` (04). The learner's kernel writes them for its self-check; under autograde the grader
writes its own, from the learner's choices, and never reads the kernel's. Reading is defensive all the
same: no symbolic links, bounded sizes, JSON checked field by field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ARTIFACTS_DIRNAME = "artifacts"
MAX_TREE_BYTES = 1_000_000_000  # an adapter of this course is < 100 MB; a tree over 1 GB is not an adapter
MAX_JSON_BYTES = 10_000_000


class ArtifactError(ValueError):
    """An artifact folder that breaks the contract; the message says what to do."""


def artifact_dir(notebook: str, root: str | Path | None = None) -> Path:
    """The known folder where a notebook's outcome exercise saves what it trained: `<root>/artifacts/<notebook>`."""
    from .registry import outcome_exercise

    outcome_exercise(notebook)  # a clear error for a notebook without one
    return Path(root or Path.cwd()) / ARTIFACTS_DIRNAME / notebook


def check_tree(folder: Path) -> None:
    """Refuse a folder that holds symbolic links or special files, or is larger than any adapter."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                raise ArtifactError(f"{path} is a symbolic link; artifacts must be plain files written by the exercise.")
            if name in filenames and not path.is_file():
                raise ArtifactError(f"{path} is not a plain file.")
            if name in filenames:
                total += path.stat().st_size
        if total > MAX_TREE_BYTES:
            raise ArtifactError(f"{folder} holds over {MAX_TREE_BYTES / 1e9:.0f} GB; an adapter of this course is far smaller.")


def read_json(path: Path, what: str) -> dict:
    """A JSON object from a plain file of bounded size."""
    if path.is_symlink() or not path.is_file():
        raise ArtifactError(f"{what}: {path.name} is missing or not a plain file.")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ArtifactError(f"{what}: {path.name} is larger than {MAX_JSON_BYTES // 10**6} MB.")
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as error:  # RecursionError: nested too deep to read
        raise ArtifactError(f"{what}: {path.name} is not JSON ({type(error).__name__}: {error}).") from None
    if not isinstance(value, dict):
        raise ArtifactError(f"{what}: {path.name} must hold a JSON object.")
    return value


def recorded_steps(artifacts: Path) -> int:
    """Optimizer steps from the run's training.json; a missing or unreadable record counts as over any budget."""
    return recorded_count(artifacts, "steps")


def recorded_count(artifacts: Path, field: str) -> int:
    """An integer of the run's training.json (steps, texts); missing or unreadable, it counts as over any budget."""
    try:
        value = read_json(artifacts / "training.json", "training record").get(field)
    except ArtifactError:
        return 10**9
    return value if isinstance(value, int) and not isinstance(value, bool) else 10**9


def recorded_double_quant(artifacts: Path) -> bool:
    """Whether the run's 4-bit base had double-quantized scales (training.json's `double_quant`; absent: False)."""
    try:
        value = read_json(artifacts / "training.json", "training record").get("double_quant", False)
    except ArtifactError:
        return False
    if not isinstance(value, bool):
        raise ArtifactError(f"training.json: double_quant must be true or false, got {value!r}.")
    return value
