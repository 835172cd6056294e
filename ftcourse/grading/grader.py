"""The grader process: the only place a verdict is computed. It runs no learner code itself.

    python -I -m ftcourse.grading.grader evaluate <notebook> --artifacts DIR --split S --preset P --out FILE
    python -I -m ftcourse.grading.grader grade --out FILE   < {"notebook", "cells", "preset", "seed", "as_released"}

`evaluate` measures a kernel's saved artifacts (the learner's self-check on the public validation split;
the instructor's own run of a solution notebook on held-out). `grade` grades a submission: every exercise
of its notebook, function checks through learner children, outcome exercises trained here from the
learner's choices (`produce`). Both write JSON to `--out`. `launch` starts this process from a kernel or
from nbgrader with a clean environment and a time cap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..presets import CPU_BF16_ENV
from . import secret as secrets_
from .learner import LEARNER_CACHE_ENV, SITE_ENV, Cells, call
from .registry import for_notebook, outcome_exercise
from .verdict import Verdict, failed

GRADER_BOOTSTRAP = ("import sys\n"
                    "if sys.argv[1]: sys.path.insert(0, sys.argv[1])\n"
                    "from ftcourse.grading.grader import main\n"
                    "sys.exit(main(sys.argv[2:]))\n")
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "HF_HOME",
              "FTCOURSE_CACHE", "FTCOURSE_REFERENCES", SITE_ENV, LEARNER_CACHE_ENV, "FTCOURSE_LEARNER_USER",
              "FTCOURSE_CHILD_SECONDS", "FTCOURSE_CHILD_MEMORY_GB", "FTCOURSE_GRANT_TRAVERSE", CPU_BF16_ENV)


def _secret_or_none() -> int | None:
    try:
        return secrets_.heldout_seed()
    except secrets_.MissingSecret:
        return None


def _scrub(text: str, secret: int | None) -> str:
    """Last line of defence: the secret's digits never leave the grader, whatever produced the text."""
    return text.replace(str(secret), "<secret>") if secret is not None else text


def grade_submission(notebook: str, sources: dict, preset_name: str, seed: int, log=print,
                     only: list[str] | None = None, as_released=()) -> dict[str, Verdict]:
    """Every exercise of `notebook` (or those of `only`), graded from the submission's solution-cell sources."""
    from ..models import embedded_model_dir
    from ..presets import get_preset
    from .checks import CHECKS, run_check
    from .produce import produce_and_evaluate

    secret = secrets_.heldout_seed()
    preset = get_preset(preset_name)
    if preset.model == "embedded":
        embedded_model_dir(verify=True)  # a cached model that someone rewrote is converted again, not trusted
    cells = Cells(sources, preset.name, seed, frozenset(as_released))
    verdicts = {}
    for exercise in for_notebook(notebook):
        if only is not None and exercise.grade_id not in only:
            continue
        start = time.perf_counter()
        try:
            if exercise.kind == "function":
                verdict = run_check(exercise, preset, secret, lambda op, inputs, secret_inputs, e=exercise: call(
                    cells, e.solutions, op, inputs, e.provides, secret_inputs))
            else:
                workdir = Path(tempfile.mkdtemp(prefix=f"ftcourse-{exercise.notebook}-"))
                try:
                    verdict = produce_and_evaluate(exercise, cells, preset, secret, workdir)
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
        except Exception as error:  # a fault of the grader itself: say so, grade 0, go on with the next exercise
            verdict = failed(exercise, "-", f"The grader could not grade this exercise ({type(error).__name__}: "
                                            f"{str(error)[:300]}); tell your instructor.")
        verdict.message = _scrub(verdict.message, secret)
        verdict.metrics["grading_seconds"] = round(time.perf_counter() - start, 1)
        log(f"{exercise.grade_id}: {'pass' if verdict.passed else 'fail'} ({verdict.metrics['grading_seconds']} s)")
        verdicts[exercise.grade_id] = verdict
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The course's grader process.")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate")
    ev.add_argument("notebook")
    ev.add_argument("--artifacts", required=True)
    ev.add_argument("--split", choices=["validation", "heldout"], default="validation")
    ev.add_argument("--preset", required=True)
    ev.add_argument("--out", required=True)
    gr = sub.add_parser("grade")
    gr.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    from ..models import embedded_model_dir
    from ..presets import get_preset

    if args.command == "evaluate":
        from .evaluate import evaluate

        preset = get_preset(args.preset)
        secret = secrets_.heldout_seed() if args.split == "heldout" else None
        if preset.model == "embedded":
            embedded_model_dir(verify=args.split == "heldout")
        verdict = evaluate(args.notebook, Path(args.artifacts), args.split, preset, secret)
        verdict.message = _scrub(verdict.message, secret)
        Path(args.out).write_text(verdict.to_json())
        return 0
    request = json.loads(sys.stdin.read())
    verdicts = grade_submission(request["notebook"], request["cells"], request["preset"], request["seed"],
                                log=lambda line: print(line, file=sys.stderr, flush=True), only=request.get("only"),
                                as_released=request.get("as_released", ()))
    Path(args.out).write_text(json.dumps({k: v.to_dict() for k, v in verdicts.items()}))
    return 0


# ---------------------------------------------------------------- starting the grader process

def grader_environment(with_secret: bool) -> dict:
    """What the grader process inherits: the course's settings, the secret only when it grades held-out."""
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env |= {"PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if with_secret:
        for name in (secrets_.HELDOUT_SEED_ENV, secrets_.ALLOW_PUBLIC_ENV):
            if name in os.environ:
                env[name] = os.environ[name]
    return env


def launch(args: list[str], stdin: str = "", timeout_s: float = 3600, with_secret: bool = False,
           cwd: str | None = None) -> tuple[object | None, str]:
    """Run the grader process with `args` (`--out` is added); return (its JSON output or None, why it failed)."""
    private = Path(tempfile.mkdtemp(prefix="ftcourse-grader-out-"))
    out = private / "out.json"
    cmd = [sys.executable, "-I", "-c", GRADER_BOOTSTRAP, os.environ.get(SITE_ENV, ""), *args, "--out", str(out)]
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout_s,
                              env=grader_environment(with_secret), cwd=cwd or private)
        if out.is_file():
            return json.loads(out.read_text()), proc.stderr
        tail = "\n    ".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        return None, f"The grader process ended without a verdict (exit code {proc.returncode}):\n    {tail}"
    except subprocess.TimeoutExpired:
        return None, f"The grader process ran past its time cap of {timeout_s:.0f} s."
    finally:
        shutil.rmtree(private, ignore_errors=True)


def evaluate_artifacts(notebook: str, artifacts: str | Path, split: str, preset_name: str, timeout_s: float = 1800) -> Verdict:
    """Evaluate saved artifacts in a fresh grader process (the self-check and the solution notebooks' hidden test)."""
    exercise = outcome_exercise(notebook)
    raw, why = launch(["evaluate", notebook, "--artifacts", str(Path(artifacts).resolve()), "--split", split,
                       "--preset", preset_name], timeout_s=timeout_s, with_secret=split == "heldout")
    return Verdict.from_dict(raw) if raw else failed(exercise, split, why)


if __name__ == "__main__":
    sys.exit(main())
