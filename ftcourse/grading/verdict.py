"""A verdict: pass or fail, the measured metrics, each threshold, and what to try."""

from __future__ import annotations

import dataclasses
import json
import math

from .registry import Exercise


@dataclasses.dataclass
class Verdict:
    """The grader's answer for one exercise on one split."""

    exercise: str  # the grade_id of the graded cell
    split: str  # "validation" (the learner's self-check), "heldout" (the grade), or "-" for function checks
    passed: bool
    metrics: dict
    checks: list  # (name, measured, comparison, threshold, ok)
    message: str

    def __str__(self) -> str:
        where = f" on the {self.split} split" if self.split != "-" else ""
        head = f"{'PASS' if self.passed else 'FAIL'} {self.exercise}{where}"
        lines = [head] + [
            f"  {'ok  ' if ok else 'MISS'} {name}: {_fmt(measured)} (needs {cmp} {_fmt(threshold)})"
            for name, measured, cmp, threshold, ok in self.checks
        ]
        if self.message:
            lines.append("  " + self.message)
        return "\n".join(lines)

    @property
    def reason(self) -> str:
        """One line saying why: the first missed check, or the message."""
        if self.passed:
            return "pass"
        missed = [f"{name} {_fmt(measured)} (needs {cmp} {_fmt(threshold)})"
                  for name, measured, cmp, threshold, ok in self.checks if not ok]
        return missed[0] if missed else (self.message.splitlines() or ["fail"])[0][:160]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, raw: dict) -> "Verdict":
        raw = dict(raw)
        raw["checks"] = [tuple(c) for c in raw.get("checks", [])]
        return cls(**raw)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) >= 1e-3 or value == 0 or math.isinf(value) else f"{value:.1e}"
    return str(value)


def compare(measured, cmp: str, threshold) -> bool:
    """`measured cmp threshold`, where a missing or NaN measurement never passes."""
    if measured is None or (isinstance(measured, float) and math.isnan(measured)):
        return False
    return measured >= threshold if cmp == ">=" else measured <= threshold


def judge(exercise: Exercise, split: str, metrics: dict, preset) -> Verdict:
    """Compare the metrics with the exercise's thresholds (preset-dependent ones resolved)."""
    checks = []
    for name, (cmp, threshold) in exercise.threshold_values(preset).items():
        measured = metrics.get(name)
        checks.append((name, measured, cmp, threshold, compare(measured, cmp, threshold)))
    passed = all(ok for *_, ok in checks)
    message = "" if passed else "What to try: " + "; ".join(exercise.hints)
    return Verdict(exercise.grade_id, split, passed, metrics, checks, message)


def failed(exercise: Exercise, split: str, message: str, metrics: dict | None = None) -> Verdict:
    """A failing verdict that says why, before any threshold could be measured."""
    return Verdict(exercise.grade_id, split, False, metrics or {}, [], message)
