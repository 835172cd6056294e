"""Graders: evaluate what a learner's training produced, in a separate Python process.

The learner's kernel only *launches* the grader; the evaluation runs in a fresh interpreter started in
isolated mode (`python -I -m ftcourse.grading ...`), reads the saved artifacts, generates the split it
is asked for and compares with thresholds kept here. Under nbgrader's autograde the verdict is decided
outside the kernel altogether, by `ftcourse.nbgrader_outcome.OutcomeVerdicts` (see autograder/).

Splits: `validation` is public (the learner's self-check); `heldout` is generated at grading time from
`$FTCOURSE_HELDOUT_SEED` (instructors set it; CI uses the fixed default) and never shipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

HELDOUT_SEED_ENV = "FTCOURSE_HELDOUT_SEED"
DEFAULT_HELDOUT_SEED = 918273  # CI's held-out seed; instructors override it with $FTCOURSE_HELDOUT_SEED
ARTIFACTS_DIRNAME = "artifacts"
VERDICT_MARK = "FTCOURSE-VERDICT "
OUTSIDE_KERNEL_ENV = "FTCOURSE_GRADED_OUTSIDE_KERNEL"  # exercises nbgrader re-grades after execution (comma list)


@dataclasses.dataclass(frozen=True)
class OutcomeSpec:
    """One outcome-graded exercise: where its artifacts live and what it must reach."""

    exercise: str
    title: str
    thresholds: dict  # metric name -> (comparison, value); relative ones are resolved against the base model
    hints: tuple[str, ...]


SPECS = {
    "03_sft": OutcomeSpec(
        exercise="03_sft",
        title="Exercise 3.2: supervised fine-tune within the step budget",
        thresholds={
            "exact_match": (">=", 0.85),  # date-to-ISO exact match on the split
            "probe_accuracy_drop": ("<=", 0.03),  # base accuracy minus tuned accuracy on the general probe
            "probe_perplexity_ratio": ("<=", 1.15),  # tuned / base perplexity on the general text
            "steps": ("<=", "step_budget"),
        },
        hints=(
            "exact match too low: raise the learning rate (LoRA tolerates 1e-3) or use more of the step budget",
            "probe regressed: prefer LoRA over a full fine-tune, lower the learning rate, or train fewer steps",
            "check that the adapter was saved with trainer.save_model(artifact_dir) after training",
        ),
    ),
    "01_when_to_fine_tune": OutcomeSpec(
        exercise="01_when_to_fine_tune",
        title="Exercise 1.2: plan a fine-tune, estimate its memory, run it",
        thresholds={
            "memory_estimate_error": ("<=", 0.15),  # |your estimate - measured| / measured, total training bytes
            "measured_memory_gb": ("<=", "memory_budget_gb"),  # the plan, measured by the grader
            "margin_over_few_shot": (">=", 0.15),  # exact match of your adapter minus the few-shot prompt's
            "steps": ("<=", "step_budget"),
        },
        hints=(
            "estimate off: estimate the plan you saved (same batch, seq_len, rank, targets and autocast dtype)",
            "over the memory budget: activations grow with batch_size x seq_len; parameters do not shrink with LoRA",
            "exact match too low: seq_len must hold the longest example (longer ones are cut), or train more steps",
        ),
    ),
    "02_data_and_tooling": OutcomeSpec(
        exercise="02_data_and_tooling",
        title="Exercise 2.2: fine-tune on the cleaned data",
        thresholds={
            "exact_match": (">=", 0.6),  # words-to-digits exact match on the split
            "steps": ("<=", "step_budget"),
        },
        hints=(
            "exact match too low: train on clean_dump's kept rows, with the chat template, for more of the step budget",
            "check that clean_dump keeps the good rows: a pipeline that flags too much leaves too little to learn from",
        ),
    ),
    "04_lora": OutcomeSpec(
        exercise="04_lora",
        title="Exercise 4.2 (capstone): a LoRA fine-tune on a task of your own design",
        thresholds={
            "train_examples": (">=", 1000),  # rows of the saved training set
            "overlap_with_train": ("<=", 0.1),  # share of fresh draws that repeat a training example (exact or near)
            "top_answer_share": ("<=", 0.5),  # the most common held-out answer: a task is more than one reply
            "base_exact_match": ("<=", 0.3),  # don't fine-tune what the model already does
            "margin_over_base": (">=", 0.3),  # the adapter's exact match minus the base model's
            "probe_accuracy_drop": ("<=", 0.03),
            "probe_perplexity_ratio": ("<=", 1.15),
            "steps": ("<=", "step_budget"),
        },
        hints=(
            "overlap too high: the task's space is too small; add values and phrasings so fresh draws are new",
            "base too high: the base model already does this task; pick a format or mapping it gets wrong",
            "margin too low: train more of the step budget or raise the learning rate; check the answers are "
            "a function of the prompt (the same prompt must always have the same answer)",
            "probe regressed: lower the learning rate or train fewer steps",
        ),
    ),
    "05_quantization_qlora": OutcomeSpec(
        exercise="05_quantization_qlora",
        title="Exercise 5.2: QLoRA, a LoRA adapter trained on the 4-bit NF4 base",
        thresholds={
            "exact_match": (">=", 0.8),  # date-to-ISO exact match, adapter on the 4-bit base
            "steps": ("<=", "step_budget"),
        },  # forgetting is 03's and 04's lesson; on CPU the 4-bit probe would add 13 s to every grading
        hints=(
            "exact match too low: use more of the step budget or a higher learning rate (LoRA tolerates 1e-3 to 2e-3)",
            "the grader loads your adapter onto the 4-bit NF4 base: train on load_quantized_model(...), not the float32 model",
            "a 4-bit model that has generated text before training does not train on CPU: train a freshly loaded one",
        ),
    ),
}
FEW_SHOT_K = 3  # the few-shot baseline of notebook 01: the first three training examples as earlier turns


@dataclasses.dataclass
class Verdict:
    """The grader's answer: pass or fail, the measured metrics, the thresholds, and what to try."""

    exercise: str
    split: str
    passed: bool
    metrics: dict
    checks: list  # (name, measured, comparison, threshold, ok)
    message: str

    def __str__(self) -> str:
        head = f"{'PASS' if self.passed else 'FAIL'} {self.exercise} on the {self.split} split"
        lines = [head] + [
            f"  {'ok  ' if ok else 'MISS'} {name}: {_fmt(measured)} (needs {cmp} {_fmt(threshold)})"
            for name, measured, cmp, threshold, ok in self.checks
        ]
        if self.message:
            lines.append("  " + self.message)
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def heldout_seed() -> int:
    """The held-out seed: the instructor's `$FTCOURSE_HELDOUT_SEED`, else CI's fixed default."""
    raw = os.environ.get(HELDOUT_SEED_ENV, "").strip()
    if not raw:
        return DEFAULT_HELDOUT_SEED
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"${HELDOUT_SEED_ENV} must be an integer, got {raw!r}.") from None


def artifact_dir(exercise: str, root: str | Path | None = None) -> Path:
    """The known folder where an exercise saves what it trained: `<root>/artifacts/<exercise>`."""
    if exercise not in SPECS:
        raise KeyError(f"Unknown exercise {exercise!r}; known: {', '.join(SPECS)}.")
    return Path(root or Path.cwd()) / ARTIFACTS_DIRNAME / exercise


def _compare(measured, cmp: str, threshold) -> bool:
    return measured >= threshold if cmp == ">=" else measured <= threshold


# ---------------------------------------------------------------- inside the grading process

def _cached(name: str, key_parts: list, compute) -> dict:
    """`compute()`'s result, cached under the hash of `key_parts`: base-model scores are the same for everyone."""
    import hashlib

    from .models import cache_root

    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:16]
    cache = cache_root() / f"{name}_{key}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    result = compute()
    cache.write_text(json.dumps(result))
    return result


def _base_reference(preset, split: str, examples, max_new_tokens: int = 12, quantized: bool = False) -> dict:
    """The base model's probe result and exact match on the split (the model is loaded only on a cache miss).

    `quantized`: the base as QLoRA sees it, decoder linears in 4-bit NF4.
    """

    def compute():
        from .evaluation import exact_match
        from .models import load_model_and_tokenizer, load_quantized_model, load_tokenizer
        from .probe import run_probe

        if quantized:
            model, tokenizer = load_quantized_model(preset.model, qlora_compute_dtype(preset)), load_tokenizer(preset.model)
        else:
            model, tokenizer = load_model_and_tokenizer(preset.model, preset.device)
        def probe():
            with preset.autocast():
                return run_probe(model, tokenizer).as_dict()

        # the probe does not depend on the split: one cached result serves every split and task
        result = dict(_cached("base_probe", [preset.model, preset.bf16, preset.fp16, quantized], probe))
        with preset.autocast():
            result["exact_match"], _ = exact_match(model, tokenizer, examples, batch_size=preset.eval_batch_size,
                                                   max_new_tokens=max_new_tokens)
        return result

    key = [preset.model, preset.bf16, preset.fp16, [e.prompt for e in examples]]
    if max_new_tokens != 12:  # the default keeps the keys that set-up has already warmed
        key += [max_new_tokens, [e.answer for e in examples]]
    if quantized:
        key += ["nf4"]
    return _cached(f"base_reference_{split}", key, compute)


def _prompting_reference(preset, split: str, examples, shots) -> dict:
    """The base model's exact match on the split, zero-shot and with a few-shot prompt (cached)."""

    def compute():
        from .evaluation import exact_match
        from .models import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(preset.model, preset.device)
        with preset.autocast():
            zero, _ = exact_match(model, tokenizer, examples, batch_size=preset.eval_batch_size)
            few, _ = exact_match(model, tokenizer, examples, batch_size=preset.eval_batch_size, shots=shots)
        return {"zero_shot_exact_match": zero, "few_shot_exact_match": few}

    key = [preset.model, preset.bf16, preset.fp16, [e.prompt for e in examples], [e.prompt for e in shots]]
    return _cached(f"prompting_reference_{split}", key, compute)


def _no_adapter(spec: OutcomeSpec, split: str, adapter: Path) -> Verdict:
    """The failing verdict of an exercise whose adapter was never saved."""
    return Verdict(spec.exercise, split, False, {}, [],
                   f"No trained adapter found at {adapter}. Run the training cell; it must save the adapter there.")


def _open_artifacts(exercise: str, artifacts: Path, split: str):
    """(spec, preset, adapter folder, early failing verdict or None): what every adapter evaluator starts with."""
    from .presets import get_preset

    spec = SPECS[exercise]
    if split not in ("validation", "heldout"):
        raise ValueError(f"split must be 'validation' or 'heldout', got {split!r}.")
    adapter = artifacts / "adapter"
    missing = None if (adapter / "adapter_config.json").exists() else _no_adapter(spec, split, adapter)
    return spec, get_preset("auto"), adapter, missing


def _recorded_steps(artifacts: Path) -> int:
    """Optimizer steps from the run's training.json; a missing record counts as over any budget."""
    record_file = artifacts / "training.json"
    return json.loads(record_file.read_text()).get("steps", 10**9) if record_file.exists() else 10**9


def qlora_compute_dtype(preset) -> str:
    """What a 4-bit base computes in on this preset: its autocast dtype, else float32."""
    return preset.autocast_dtype or "float32"


def _evaluate_date_adapter(exercise: str, artifacts: Path, split: str, quantized: bool) -> Verdict:
    """Exact match on the date task's split and the general probe, the adapter on the (4-bit) base."""
    from .evaluation import exact_match
    from .models import load_adapter_model
    from .probe import run_probe
    from .tasks import date_task_splits

    spec, preset, adapter, missing = _open_artifacts(exercise, artifacts, split)
    if missing:
        return missing
    splits = date_task_splits(preset.n_train, preset.n_eval, heldout_seed=heldout_seed() if split == "heldout" else None)
    base_probe = _base_reference(preset, split, splits[split], quantized=quantized)
    model, tokenizer = load_adapter_model(adapter, preset.device,
                                          base_4bit_compute_dtype=qlora_compute_dtype(preset) if quantized else None)
    with preset.autocast():
        em, _ = exact_match(model, tokenizer, splits[split], batch_size=preset.eval_batch_size)
        probe = run_probe(model, tokenizer).as_dict() if "probe_accuracy_drop" in spec.thresholds else None
    metrics = {"exact_match": em, "base_exact_match": base_probe["exact_match"],
               "steps": _recorded_steps(artifacts), "n_examples": len(splits[split])}
    if probe is None:
        return _verdict(spec, split, metrics, preset)
    metrics |= {
        "probe_accuracy": probe["probe_accuracy"], "base_probe_accuracy": base_probe["probe_accuracy"],
        "probe_accuracy_drop": base_probe["probe_accuracy"] - probe["probe_accuracy"],
        "probe_perplexity": probe["probe_perplexity"], "base_probe_perplexity": base_probe["probe_perplexity"],
        "probe_perplexity_ratio": probe["probe_perplexity"] / base_probe["probe_perplexity"],
    }
    return _verdict(spec, split, metrics, preset)


def evaluate_sft(artifacts: Path, split: str) -> Verdict:
    """Grade exercise 03: exact match on the split and the general probe, adapter on the base model."""
    return _evaluate_date_adapter("03_sft", artifacts, split, quantized=False)


def evaluate_qlora(artifacts: Path, split: str) -> Verdict:
    """Grade exercise 05: the same measures with the adapter loaded onto the 4-bit NF4 base."""
    return _evaluate_date_adapter("05_quantization_qlora", artifacts, split, quantized=True)


def _verdict(spec: OutcomeSpec, split: str, metrics: dict, preset) -> Verdict:
    """Compare the metrics with the spec's thresholds (named ones are read from the preset)."""
    checks = []
    for name, (cmp, threshold) in spec.thresholds.items():
        threshold = getattr(preset, threshold) if isinstance(threshold, str) else threshold
        checks.append((name, metrics[name], cmp, threshold, _compare(metrics[name], cmp, threshold)))
    passed = all(ok for *_, ok in checks)
    message = "" if passed else "What to try: " + "; ".join(spec.hints)
    return Verdict(spec.exercise, split, passed, metrics, checks, message)


def evaluate_plan(artifacts: Path, split: str) -> Verdict:
    """Grade exercise 01: the saved memory estimate against the grader's own measurement of the plan,
    and the adapter's exact match on the phone task against the few-shot prompt's."""
    from .estimator import build_model_for_plan, load_plan, measure_training_memory
    from .evaluation import exact_match
    from .models import load_adapter_model
    from .presets import get_preset
    from .tasks import phone_task_splits

    spec = SPECS["01_when_to_fine_tune"]
    preset = get_preset("auto")
    adapter, plan_file = artifacts / "adapter", artifacts / "plan.json"
    missing = [str(p) for p in (adapter / "adapter_config.json", plan_file) if not p.exists()]
    if missing:
        return Verdict(spec.exercise, split, False, {}, [],
                       f"Missing {', '.join(missing)}. Run the exercise's training cell; it saves the plan and the adapter.")
    plan, record = load_plan(plan_file)
    if plan.method != "lora" or plan.autocast_dtype != preset.autocast_dtype:
        return Verdict(spec.exercise, split, False, {}, [],
                       f"The plan must be method='lora' with autocast_dtype={preset.autocast_dtype!r} (this preset's); "
                       f"got method={plan.method!r}, autocast_dtype={plan.autocast_dtype!r}.")
    splits = phone_task_splits(preset.n_train, preset.n_eval, heldout_seed=heldout_seed() if split == "heldout" else None)
    if split not in ("validation", "heldout"):
        raise ValueError(f"split must be 'validation' or 'heldout', got {split!r}.")
    measured = measure_training_memory(build_model_for_plan(plan, preset.model, preset.device), plan)
    prompting = _prompting_reference(preset, split, splits[split], splits["train"][:FEW_SHOT_K])
    model, tokenizer = load_adapter_model(adapter, preset.device)
    with preset.autocast():
        em, _ = exact_match(model, tokenizer, splits[split], batch_size=preset.eval_batch_size)
    estimate_total = float(record["estimate"]["total"])
    metrics = {
        "memory_estimate_error": abs(estimate_total - measured.total) / measured.total,
        "estimated_memory_gb": estimate_total / 1e9, "measured_memory_gb": measured.total / 1e9,
        "exact_match": em, "base_exact_match": prompting["zero_shot_exact_match"],
        "few_shot_exact_match": prompting["few_shot_exact_match"],
        "margin_over_few_shot": em - prompting["few_shot_exact_match"],
        "steps": int(record.get("steps", 10**9)), "n_examples": len(splits[split]),
    }
    return _verdict(spec, split, metrics, preset)


def _number_base_reference(preset, split: str, examples) -> dict:
    """The base model's exact match on a words-to-digits split (cached)."""

    def compute():
        from .evaluation import exact_match
        from .models import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(preset.model, preset.device)
        with preset.autocast():
            return {"exact_match": exact_match(model, tokenizer, examples, batch_size=preset.eval_batch_size)[0]}

    return _cached(f"number_base_{split}", [preset.model, preset.bf16, preset.fp16, [e.prompt for e in examples]], compute)


def evaluate_cleaned_sft(artifacts: Path, split: str) -> Verdict:
    """Grade exercise 02: words-to-digits exact match of the adapter trained on the cleaned dump."""
    from .data_quality import SHIPPED_POOL
    from .evaluation import exact_match
    from .models import load_adapter_model
    from .tasks import number_task_splits

    spec, preset, adapter, missing = _open_artifacts("02_data_and_tooling", artifacts, split)
    if missing:
        return missing
    splits = number_task_splits(SHIPPED_POOL, preset.n_eval, heldout_seed=heldout_seed() if split == "heldout" else None)
    base_em = _number_base_reference(preset, split, splits[split])
    model, tokenizer = load_adapter_model(adapter, preset.device)
    with preset.autocast():
        em, _ = exact_match(model, tokenizer, splits[split], batch_size=preset.eval_batch_size)
    steps = _recorded_steps(artifacts)
    metrics = {"exact_match": em, "base_exact_match": base_em["exact_match"], "steps": steps,
               "n_examples": len(splits[split])}
    return _verdict(spec, split, metrics, preset)


def evaluate_capstone(artifacts: Path, split: str) -> Verdict:
    """Grade exercise 04: the learner's own task, held out by drawing from their generator with the grader's seed."""
    from .capstone import (MIN_TRAIN_EXAMPLES, NearDuplicateIndex, capstone_splits, load_generator,
                           load_train_file, max_answer_tokens, task_report)
    from .evaluation import exact_match
    from .models import load_adapter_model
    from .probe import run_probe

    spec, preset, adapter, missing = _open_artifacts("04_lora", artifacts, split)
    if missing:
        return missing
    missing = [str(p) for p in (artifacts / "task.py", artifacts / "train.jsonl") if not p.exists()]
    if missing:
        return Verdict(spec.exercise, split, False, {}, [],
                       f"Missing {', '.join(missing)}: save them with save_capstone(make_example, train, folder).")
    try:
        saved_train = load_train_file(artifacts / "train.jsonl")
        make_example = load_generator((artifacts / "task.py").read_text())
        splits = capstone_splits(make_example, MIN_TRAIN_EXAMPLES, preset.n_eval,
                                 heldout_seed=heldout_seed() if split == "heldout" else None)
    except Exception as error:  # the learner's generator: any failure is a clear failed verdict
        return Verdict(spec.exercise, split, False, {}, [], f"Your task could not be drawn: {type(error).__name__}: {error}")
    # held-out examples must be new to what was actually trained on: drop overlaps with the saved set too
    saved_index = NearDuplicateIndex(saved_train)
    examples = [e for e in splits[split] if not saved_index.overlaps(e)]
    overlap = max(splits[f"overlap_{split}"], 1 - len(examples) / max(len(splits[split]), 1))
    if not examples:
        return Verdict(spec.exercise, split, False, {"overlap_with_train": overlap}, [],
                       "Every held-out example repeats the saved training set: " + spec.hints[0])
    model, tokenizer = load_adapter_model(adapter, preset.device)
    new_tokens = max_answer_tokens(tokenizer, examples)
    base = _base_reference(preset, f"capstone_{split}", examples, max_new_tokens=new_tokens)
    with preset.autocast():
        em, _ = exact_match(model, tokenizer, examples, batch_size=preset.eval_batch_size, max_new_tokens=new_tokens)
        probe = run_probe(model, tokenizer).as_dict()
    metrics = {
        "train_examples": len(saved_train), "overlap_with_train": overlap,
        "top_answer_share": task_report(examples)["top_answer_share"],
        "exact_match": em, "base_exact_match": base["exact_match"], "margin_over_base": em - base["exact_match"],
        "probe_accuracy": probe["probe_accuracy"], "base_probe_accuracy": base["probe_accuracy"],
        "probe_accuracy_drop": base["probe_accuracy"] - probe["probe_accuracy"],
        "probe_perplexity": probe["probe_perplexity"], "base_probe_perplexity": base["probe_perplexity"],
        "probe_perplexity_ratio": probe["probe_perplexity"] / base["probe_perplexity"],
        "steps": _recorded_steps(artifacts), "n_examples": len(examples),
    }
    return _verdict(spec, split, metrics, preset)


EVALUATORS = {"01_when_to_fine_tune": evaluate_plan, "02_data_and_tooling": evaluate_cleaned_sft, "03_sft": evaluate_sft,
              "04_lora": evaluate_capstone, "05_quantization_qlora": evaluate_qlora}


def warm_base_references() -> None:
    """Compute and cache the base model's reference scores for the validation and held-out splits."""
    import warnings

    from .presets import get_preset
    from .tasks import date_task_splits

    warnings.filterwarnings("ignore")
    preset = get_preset("auto")
    from .data_quality import SHIPPED_POOL
    from .tasks import number_task_splits, phone_task_splits

    splits = date_task_splits(preset.n_train, preset.n_eval, heldout_seed=heldout_seed())
    phone = phone_task_splits(preset.n_train, preset.n_eval, heldout_seed=heldout_seed())
    numbers = number_task_splits(SHIPPED_POOL, preset.n_eval, heldout_seed=heldout_seed())
    for split in ("validation", "heldout"):
        _base_reference(preset, split, splits[split])
        _base_reference(preset, split, splits[split], quantized=True)
        _prompting_reference(preset, split, phone[split], phone["train"][:FEW_SHOT_K])
        _number_base_reference(preset, split, numbers[split])


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Grade an exercise's saved artifacts (runs in its own process).")
    parser.add_argument("exercise", choices=sorted(EVALUATORS))
    parser.add_argument("--artifacts", required=True, help="the exercise's artifact folder")
    parser.add_argument("--split", default="validation", choices=["validation", "heldout"])
    args = parser.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    verdict = EVALUATORS[args.exercise](Path(args.artifacts), args.split)
    print(VERDICT_MARK + verdict.to_json(), flush=True)
    return 0


# ---------------------------------------------------------------- launched from a notebook or nbgrader

def _clean_env() -> dict:
    """The environment the grading process gets: only what it needs, nothing the kernel added."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "HF_HOME", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES",
            "FTCOURSE_PRESET", "FTCOURSE_CACHE", HELDOUT_SEED_ENV, "OMP_NUM_THREADS")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PYTHONWARNINGS"] = "ignore"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def run_grader(exercise: str, artifacts: str | Path, split: str = "validation", timeout_s: int = 900,
               python: str | None = None) -> Verdict:
    """Evaluate an exercise's artifacts in a fresh, isolated Python process and return its verdict."""
    if exercise not in EVALUATORS:
        raise KeyError(f"Unknown exercise {exercise!r}; known: {', '.join(EVALUATORS)}.")
    cmd = [python or sys.executable, "-I", "-m", "ftcourse.grading", exercise,
           "--artifacts", str(Path(artifacts).resolve()), "--split", split]
    workdir = next(p for p in Path(artifacts).resolve().parents if p.is_dir())  # the folder may not exist yet
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=_clean_env(), cwd=str(workdir))
    for line in proc.stdout.splitlines():
        if line.startswith(VERDICT_MARK):
            raw = json.loads(line[len(VERDICT_MARK):])
            raw["checks"] = [tuple(c) for c in raw["checks"]]
            return Verdict(**raw)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
    return Verdict(exercise, split, False, {}, [], "The grader could not evaluate the artifacts:\n    " + "\n    ".join(tail))


def self_check(exercise: str, root: str | Path | None = None) -> Verdict:
    """The learner's visible check: the same grader on the public validation split; prints the verdict."""
    verdict = run_grader(exercise, artifact_dir(exercise, root), split="validation")
    print(verdict)
    return verdict


def graded_outside_kernel(exercise: str) -> bool:
    """True inside nbgrader's autograde when `OutcomeVerdicts` re-grades `exercise` after execution.

    Then the kernel's own run of the hidden test would be replaced unread: skipping it halves the grading
    time of an outcome exercise. Both conditions come from the instructor's nbgrader process (the kernel
    inherits its environment); outside autograde, or for an exercise the preprocessor does not re-grade,
    the hidden test runs in the kernel as usual.
    """
    return (os.environ.get("NBGRADER_EXECUTION") == "autograde"
            and exercise in os.environ.get(OUTSIDE_KERNEL_ENV, "").split(","))


def assert_outcome(exercise: str, root: str | Path | None = None) -> None:
    """A hidden test: grade on the held-out split and fail with the verdict as the message."""
    if graded_outside_kernel(exercise):
        print(f"{exercise}: graded on the held-out split outside the kernel, after execution")
        return
    verdict = run_grader(exercise, artifact_dir(exercise, root), split="heldout")
    if not verdict.passed:
        raise AssertionError(str(verdict))
    print(verdict)


if __name__ == "__main__":
    sys.exit(_main())
