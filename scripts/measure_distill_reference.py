"""How much margin does Exercise 9.2's reference have? The grader's own training and evaluation of candidate runs.

Each candidate is the reference's choices (the teacher's answers with the 16 labels where known, T 1, alpha 0) with
its own steps, rows per step, learning rate, schedule and seed. It trains the student as the grader does
(`distill.train_student` with `distill.preset_student_args`), then scores it with the grader's evaluator on the
public validation dates and on the public test seed's held-out dates: share of the teacher's exact match and gain
over the labels-only student, against the exercise's thresholds (README, notebook 09).

    python scripts/measure_distill_reference.py [--preset cpu] name:steps:rows:lr:schedule:seed ...
    python scripts/measure_distill_reference.py ref:32:8:5e-4:linear:0 b12:32:12:5e-4:linear:0

One JSON line per candidate. Measured on 2026-12-07 (the float32 path): the README's 09 section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="+", help="name:steps:rows:lr:schedule:seed")
    parser.add_argument("--preset", default="cpu")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("FTCOURSE_HELDOUT_SEED", "918273")  # the public test seed, as make course uses it
    os.environ.setdefault("FTCOURSE_ALLOW_PUBLIC_SEED", "1")
    from trl import SFTConfig

    from ftcourse import distill
    from ftcourse.grading import secret as secrets_
    from ftcourse.grading.evaluate import evaluate
    from ftcourse.notebook import quiet, seed_everything
    from ftcourse.presets import get_preset
    from ftcourse.tasks import date_task_splits
    from ftcourse.training import write_training_record

    preset = get_preset(args.preset)
    teacher, tokenizer, record = distill.course_teacher(preset, distill.teacher_dir(preset))
    train = date_task_splits(preset.n_train, preset.n_eval)["train"]
    data = distill.distillation_examples("teacher answers, labels where known", train, record["answers"])
    secret = secrets_.heldout_seed()
    work = Path(tempfile.mkdtemp(prefix="measure-distill-"))
    for spec in args.candidates:
        try:
            name, steps, rows, lr, schedule, seed = spec.split(":")
        except ValueError:
            parser.error(f"{spec!r}: expected name:steps:rows:lr:schedule:seed, e.g. ref:32:8:5e-4:linear:0")
        config = SFTConfig(output_dir=str(work / f"trainer_{name}"), max_steps=int(steps),
                           per_device_train_batch_size=int(rows), learning_rate=float(lr), lr_scheduler_type=schedule,
                           seed=int(seed), **distill.preset_student_args(preset))
        seed_everything(int(seed))
        with quiet():
            student, result = distill.train_student(teacher, tokenizer, data, config, 1.0, 0.0, preset, progress=False)
        artifacts = work / name
        distill.save_student(student, artifacts / "student")
        write_training_record(artifacts, result.steps, result.losses, result.seconds)
        line = {"candidate": spec, "path": preset.autocast_dtype or "float32", "train_s": round(result.seconds),
                "last_loss": round(result.losses[-1], 3)}
        for split in ("validation", "heldout"):
            verdict = evaluate("09_distillation", artifacts, split, preset, secret if split == "heldout" else None)
            line[split] = {k: round(verdict.metrics[k], 3) for k in ("exact_match", "share_of_teacher",
                                                                     "gain_over_labels_only")} | {"pass": verdict.passed}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
