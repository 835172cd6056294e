"""The grader's side of a call into learner code: what to send a child, and the checks on what comes back.

`call(exercise_cells, op, inputs, ...)` runs solution cells (by grade_id, from a notebook) in a child
through `sandbox.run_learner_code` and returns its data; `LearnerCodeError` carries the message the
learner may read. Everything here runs in the deciding process and treats the child's data as untrusted.
"""

from __future__ import annotations

import dataclasses
import os

import contextlib

from .sandbox import ChildResult, LearnerSession, Limits, run_learner_code

SITE_ENV = "FTCOURSE_GRADING_SITE"  # the grader's non-editable install of ftcourse, set by `make grade`
LEARNER_CACHE_ENV = "FTCOURSE_LEARNER_CACHE"  # a model cache the learner user may read (not write), set by `make grade`


class LearnerCodeError(Exception):
    """Learner code gave no usable data; the message is safe to show in feedback."""

    def __init__(self, message: str, result: ChildResult | None = None):
        super().__init__(message)
        self.result = result


@dataclasses.dataclass(frozen=True)
class Cells:
    """Solution cells of one submission, by grade_id, and the run parameters they are executed with."""

    sources: dict  # grade_id -> source
    preset: str  # a resolved preset name ("cpu", "t4", "a100")
    seed: int  # the notebook's SEED parameter
    as_released: frozenset = frozenset()  # grade_ids whose source is the released stub's, character for character

    def pick(self, grade_ids) -> list[tuple[str, str]]:
        """The sources of `grade_ids`, in order; a clear error for a missing cell."""
        picked = []
        for grade_id in grade_ids:
            source = self.sources.get(grade_id)
            if source is None:
                raise LearnerCodeError(f"The solution cell {grade_id!r} is missing from the notebook (or appears "
                                       "twice); restore it from the released notebook.")
            picked.append((grade_id, source))
        return picked


def _runnable(cells: Cells, grade_ids) -> list[tuple[str, str]]:
    """The cells' sources, unless all are the released stub (which raises NotImplementedError): the answer is known."""
    picked = cells.pick(grade_ids)
    if picked and all(grade_id in cells.as_released for grade_id, _ in picked):
        names = ", ".join(repr(grade_id) for grade_id, _ in picked)
        raise LearnerCodeError(f"The solution cell {names} is as released: it raises NotImplementedError. "
                               "Replace the stub with your solution.")
    return picked


def call(cells: Cells, grade_ids, op: str, inputs: dict | None = None, provides=(), secret_inputs: bool = False,
         limits: Limits | None = None):
    """Run the solution cells `grade_ids` in a child, then `op` on `inputs`; return the child's data. Cells that are
    all the released stub (which raises NotImplementedError) are not run: the answer is known, and a class of
    partly done notebooks would otherwise start a child per untouched exercise."""
    picked = _runnable(cells, grade_ids)
    request = {"cells": picked, "provides": list(provides), "preset": cells.preset, "seed": cells.seed,
               "op": op, "inputs": inputs or {}}
    from ..models import cache_root

    result = run_learner_code(request, limits=limits, site=os.environ.get(SITE_ENV) or None,
                              cache=os.environ.get(LEARNER_CACHE_ENV) or str(cache_root()), secret_inputs=secret_inputs)
    if not result.ok:
        raise LearnerCodeError(result.error, result)
    return result.data


@contextlib.contextmanager
def session(cells: Cells, grade_ids, provides=(), limits: Limits | None = None):
    """A child that ran the solution cells `grade_ids` once and answers calls while the grader works: yields
    `ask(op, inputs) -> data` (a LearnerCodeError when the child gave no usable data). Stub cells as `call`."""
    picked = _runnable(cells, grade_ids)
    from ..models import cache_root

    request = {"cells": picked, "provides": list(provides), "preset": cells.preset, "seed": cells.seed}
    with LearnerSession(request, limits=limits, site=os.environ.get(SITE_ENV) or None,
                        cache=os.environ.get(LEARNER_CACHE_ENV) or str(cache_root())) as child:
        if not child.started.ok:
            raise LearnerCodeError(child.started.error, child.started)

        def ask(op: str, inputs: dict):
            result = child.call(op, inputs)
            if not result.ok:
                raise LearnerCodeError(result.error, result)
            return result.data

        yield ask


# ---------------------------------------------------------------- checks of untrusted data

def expect(condition: bool, message: str) -> None:
    if not condition:
        raise LearnerCodeError(message)


def as_int(value, what: str, low: int | None = None, high: int | None = None) -> int:
    expect(isinstance(value, int) and not isinstance(value, bool), f"{what} must be an integer, got {value!r}.")
    expect(low is None or value >= low, f"{what} must be at least {low}, got {value}.")
    expect(high is None or value <= high, f"{what} must be at most {high}, got {value}.")
    return value


def as_number(value, what: str) -> float:
    expect(isinstance(value, (int, float)) and not isinstance(value, bool), f"{what} must be a number, got {value!r}.")
    return float(value)


def as_dataclass(cls, raw, what: str, tuples=()):
    """`cls(**raw)` from a dict the child sent: unknown fields and wrong types are the learner's error."""
    expect(isinstance(raw, dict), f"{what} must be a {cls.__name__}, got {type(raw).__name__}.")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - fields
    expect(not unknown, f"{what} has fields {cls.__name__} does not know: {sorted(unknown)}.")
    values = dict(raw)
    for name in tuples:
        if isinstance(values.get(name), list):
            values[name] = tuple(values[name])
    for name, value in values.items():
        expect(isinstance(value, (int, float, str, bool, tuple, type(None))),
               f"{what}.{name} must be a number, a string or a list of strings, got {value!r}.")
    try:
        return cls(**values)
    except TypeError as error:
        raise LearnerCodeError(f"{what}: {error}") from None
