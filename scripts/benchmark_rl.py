"""Benchmark: a GRPO step on the CPU preset, TRL's trainer against the course's, same model, data, seed and steps.

    python scripts/benchmark_rl.py --preset cpu [--steps 4] [--runs 3]      (or: make benchmark)

The shape of notebook 08's Exercise 8.2 reference: 2 prompts x 8 sampled replies a step, at most 12 new tokens,
temperature 0.7, LoRA of the preset's rank on the attention projections, lr 5e-4, beta 0, the task's checker as the
reward. Three trainers, each in its own process (its peak memory is its own):
- `trl`: TRL's `GRPOTrainer` as it is, with the preset's machine arguments;
- `labelled_only`: its subclass whose fused LM head scores the reply tokens only (the course's path before prompts
  were shared: `training.scoring_labelled_positions_only`);
- `shared`: that subclass when it also runs each distinct prompt once per step, when sampling and when scoring
  (`training.shared_prompt_generation`, `shared_prompt_backbone`).
The course's trainer (`grpo.grpo_trainer_class(preset)`) is `shared` when the preset shares prompts
(`share_prompt_forward`), `labelled_only` when not: the header says which.
Reported per trainer: seconds per step (the first step left out: start-up), the seconds of a step spent sampling and
scoring (forward and backward), peak RSS, and how far its logged numbers are from `trl`'s (loss, reward, reply
length, every step): the same seed samples the same replies unless rounding moves a sample. Each figure is the
minimum and the median of `--runs` runs (the machine is shared). Writes build/benchmark_rl_<preset>.md.
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from collections import defaultdict
from pathlib import Path

from bench_io import benchmark_args, measure_in_child, write_report

ROOT = Path(__file__).resolve().parent.parent
TRAINERS = ("trl", "labelled_only", "shared")
LOGGED = ("loss", "reward", "completions/mean_length", "grad_norm")


def run_one(name: str, preset, steps: int) -> dict:
    import torch
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from ftcourse import grpo, preferences
    from ftcourse.models import load_model, load_tokenizer
    from ftcourse.notebook import quiet
    from ftcourse.training import scoring_labelled_positions_only

    trainer_class = {"trl": GRPOTrainer, "labelled_only": scoring_labelled_positions_only(GRPOTrainer),
                     "shared": scoring_labelled_positions_only(GRPOTrainer, share_prompts=True)}[name]
    tokenizer = load_tokenizer(preset.model)
    questions = preferences.preference_splits(preset.n_train, preset.n_eval)["train"]
    args = GRPOConfig(output_dir=str(ROOT / "build" / "benchmark_rl"), max_steps=steps, learning_rate=5e-4,
                      lr_scheduler_type="constant", num_generations=8, per_device_train_batch_size=16, temperature=0.7,
                      max_completion_length=12, seed=0, **grpo.preset_grpo_args(preset))
    lora = LoraConfig(task_type="CAUSAL_LM", r=preset.lora_r, lora_alpha=2 * preset.lora_r,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    torch.manual_seed(0)  # the trainer draws LoRA's A matrices when it wraps the model
    trainer = trainer_class(model=load_model(preset.model, preset.device, seed=0), args=args,
                            processing_class=tokenizer, reward_funcs=[grpo.checker_reward],
                            train_dataset=grpo.rl_dataset(questions), peft_config=lora)
    phases: dict[str, float] = defaultdict(float)
    step_ends: list[float] = []

    def timed(label, method):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                phases[label] += time.perf_counter() - start
        return wrapper

    trainer._generate_single_turn = timed("sampling", trainer._generate_single_turn)
    trainer.compute_loss = timed("scoring forward", trainer.compute_loss)
    trainer.accelerator.backward = timed("backward", trainer.accelerator.backward)
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            step_ends.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            step_ends.append(time.perf_counter())

        def on_step_begin(self, *a, **k):
            if len(step_ends) == 2:  # the first step done: phases from here on
                phases.clear()

    trainer.add_callback(Clock())
    with quiet():
        trainer.train()
    durations = [b - a for a, b in zip(step_ends, step_ends[1:])]
    timed_steps = max(len(durations) - 1, 1)
    logged = [{k: row[k] for k in LOGGED if k in row} for row in trainer.state.log_history if "reward" in row]
    return {"trainer": name, "seconds_per_step": sum(durations[1:]) / timed_steps,
            "phases_s": {k: v / timed_steps for k, v in phases.items()}, "logged": logged,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}


def _largest_gap(rows: list[dict], reference: list[dict]) -> dict:
    return {k: max((abs(a[k] - b[k]) for a, b in zip(rows, reference) if k in a and k in b), default=float("nan"))
            for k in LOGGED}


def main() -> int:
    args, preset = benchmark_args(__doc__, steps=4)
    if args.one:
        print("BENCH " + json.dumps(run_one(args.one, preset, args.steps)), flush=True)
        return 0
    from ftcourse.plots import table

    runs: dict = defaultdict(list)
    for run in range(args.runs):
        for name in TRAINERS:
            row = measure_in_child(__file__, "--preset", args.preset, "--steps", str(args.steps), "--one", name)
            if row is None:
                return 1
            runs[name].append(row)
            print(f"run {run + 1}/{args.runs}: {name} {row['seconds_per_step']:.2f} s a step", flush=True)
    trl_median = statistics.median(r["seconds_per_step"] for r in runs["trl"])
    rows = []
    for name in TRAINERS:
        values = runs[name]
        seconds = [v["seconds_per_step"] for v in values]
        gap = _largest_gap(values[0]["logged"], runs["trl"][0]["logged"])
        rows.append({"trainer": name, "s_per_step_min": min(seconds), "s_per_step_median": statistics.median(seconds),
                     "speedup_vs_trl": trl_median / statistics.median(seconds),
                     **{f"{p}_s": statistics.median(v["phases_s"].get(p, 0.0) for v in values)
                        for p in ("sampling", "scoring forward", "backward")},
                     "peak_rss_gb": max(v["peak_rss_gb"] for v in values),
                     "loss_gap": gap["loss"], "reward_gap": gap["reward"], "length_gap": gap["completions/mean_length"]})
    header = (f"preset={preset.name} ({preset.describe()}); GRPO, 08's exercise shape: 2 prompts x 8 replies, at most 12 "
              f"new tokens, LoRA r={preset.lora_r} on q/k/v/o; {args.steps} steps (the first left out of the times); "
              f"{args.runs} runs; the preset shares prompts: {preset.share_prompt_forward}")
    text = "\n\n".join([
        table(rows, list(rows[0]), floatfmt=".3f"),
        "*_gap: the largest |difference| from trl's logged value over the steps of the first run (loss, mean reward, "
        "mean reply length); phases: seconds a step in sampling (generate), the scoring forward (compute_loss) and "
        "backward, medians of the runs.",
    ])
    write_report(ROOT / "build" / f"benchmark_rl_{preset.name}.md", header, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
