"""Benchmark: where a training step's time goes, three training paths side by side, and exact-match evaluation.

    python scripts/benchmark_training.py --preset cpu [--steps 8] [--runs 3]      (or: make benchmark)

In one run, same model, data, LoRA adapter and steps, each path in its own process (its peak memory is its own):
- `course`: the course's path, `ftcourse.training.train_sft` with the preset's choices;
- `course_trl_head`: the same with TRL's `SFTTrainer` as it is (the course's path before this benchmark);
- `trl`: TRL's `SFTTrainer` with `SFTConfig`'s defaults (only the run's size, rate and `report_to` set);
- `plain`: a plain PyTorch + PEFT loop (AdamW, the model's own loss on full logits).
Reported per path: real (non-padding) tokens/s, share of the matmul roofline (4 x parameters FLOPs per trained
token, over the throughput of a large matmul measured in the same dtype), peak RSS, and the time of each phase
of a step (collation, backbone forward, LM head and loss with any per-step metrics, backward, optimizer, the rest).
Evaluation: exact match on 64 prompts (12 new tokens) of a trained adapter, as the course evaluated until now
and as it evaluates now, with the predictions compared one by one. Each figure is the minimum and the median
of `--runs` runs (the machine is shared). Writes build/benchmark_training_<preset>.md.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench_io import benchmark_args, measure_in_child, write_report

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("course", "course_trl_head", "trl", "plain")
# TRL computes its per-step metrics (entropy, token accuracy over the vocabulary) inside its fused LM head, so they
# are part of "LM head + loss" for the TRL paths.
PHASES = ("collation", "backbone forward", "LM head + loss", "backward", "optimizer", "rest")


class Phases:
    """Wall time per phase of each step; CPU work is synchronous, so a timer around a call is its cost."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.depth = 0

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
        return timed


def _examples(preset, n: int):
    from ftcourse.tasks import date_task_splits

    return date_task_splits(max(preset.n_train, n), preset.n_eval)["train"][:n]


def _setup(preset, steps: int):
    from ftcourse.training import SFTSetup

    return SFTSetup(method="lora", max_steps=steps, learning_rate=1e-3, batch_size=preset.batch_size,
                    lora_r=preset.lora_r, lora_alpha=2 * preset.lora_r, layout="padded", seed=0)


def _instrument(trainer, phases: Phases, step_ends: list):
    """Wrap the trainer's collator, backbone, loss, backward and optimizer with timers."""
    from transformers import TrainerCallback

    trainer.data_collator = phases.wrap("collation", trainer.data_collator)
    model = trainer.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix)
    backbone.forward = phases.wrap("backbone forward", backbone.forward)
    original_loss = trainer.compute_loss

    def compute_loss(*args, **kwargs):
        before = phases.seconds["backbone forward"]
        start = time.perf_counter()
        loss = original_loss(*args, **kwargs)
        phases.seconds["loss (all)"] += time.perf_counter() - start - (phases.seconds["backbone forward"] - before)
        return loss

    trainer.compute_loss = compute_loss
    trainer.accelerator.backward = phases.wrap("backward", trainer.accelerator.backward)

    class Steps(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            step_ends.append(time.perf_counter())

        def on_pre_optimizer_step(self, args, state, control, **kw):
            self.opt_start = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kw):
            phases.seconds["optimizer"] += time.perf_counter() - self.opt_start

        def on_step_end(self, args, state, control, **kw):
            step_ends.append(time.perf_counter())

    trainer.add_callback(Steps())


def _lm_head_share(trainer, phases: Phases) -> None:
    """What compute_loss spent beyond the backbone: the LM head and the loss (with TRL's metrics, for TRL)."""
    phases.seconds["LM head + loss"] = phases.seconds.pop("loss (all)", 0.0)


def run_trainer_path(path: str, preset, steps: int) -> dict:
    """The course's path or TRL's defaults: an SFTTrainer run, instrumented."""
    import torch
    from trl import SFTConfig, SFTTrainer

    from ftcourse.models import load_model_and_tokenizer
    from ftcourse.training import lora_config, sft_config, to_prompt_completion, trainer_class

    examples = _examples(preset, steps * preset.batch_size)
    setup = _setup(preset, steps)
    model, tokenizer = load_model_and_tokenizer(preset.model, preset.device)
    out = tempfile.mkdtemp()
    if path.startswith("course"):
        if path == "course_trl_head":
            preset = dataclasses.replace(preset, lm_head_on_labels_only=False)
        cls, args = trainer_class(preset), sft_config(setup, preset, out)
    else:
        cls = SFTTrainer
        args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=preset.batch_size,
                         learning_rate=setup.learning_rate, report_to="none", use_cpu=preset.device == "cpu",
                         bf16=preset.bf16, fp16=preset.fp16, seed=0, max_length=preset.max_length)
    torch.manual_seed(0)
    trainer = cls(model=model, args=args, train_dataset=to_prompt_completion(examples), processing_class=tokenizer,
                  peft_config=lora_config(setup))
    phases, step_ends = Phases(), []
    _instrument(trainer, phases, step_ends)
    real = []
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        real.append(int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting
    losses = []
    original_log = trainer.log

    def log(logs, *a, **k):
        if "loss" in logs:
            losses.append(float(logs["loss"]))
        return original_log(logs, *a, **k)

    trainer.log = log
    trainer.train()
    _lm_head_share(trainer, phases)
    return _summary(path, preset, step_ends, real, phases, losses, model)


def run_plain(preset, steps: int) -> dict:
    """A plain PyTorch + PEFT loop: the model's own loss (full logits), AdamW, the same batches."""
    import torch
    from peft import get_peft_model

    from ftcourse.models import load_model_and_tokenizer
    from ftcourse.training import lora_config

    examples = _examples(preset, steps * preset.batch_size)
    setup = _setup(preset, steps)
    model, tokenizer = load_model_and_tokenizer(preset.model, preset.device)
    torch.manual_seed(0)
    model = get_peft_model(model, lora_config(setup))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=setup.learning_rate)
    phases, step_ends, real, losses = Phases(), [time.perf_counter()], [], []
    base = model.get_base_model()
    backbone = getattr(base, base.base_model_prefix)
    backbone.forward = phases.wrap("backbone forward", backbone.forward)

    def collate(batch):
        rows, labels = [], []
        for e in batch:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": e.prompt}], tokenize=True,
                                                   add_generation_prompt=True)["input_ids"]
            ids = tokenizer.apply_chat_template(e.messages(), tokenize=True)["input_ids"]
            rows.append(ids)
            labels.append([-100] * len(prompt) + ids[len(prompt):])
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        label_t = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (r, l) in enumerate(zip(rows, labels)):
            input_ids[i, :len(r)], label_t[i, :len(l)], mask[i, :len(r)] = torch.tensor(r), torch.tensor(l), 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": label_t}

    collate = phases.wrap("collation", collate)
    for step in range(steps):
        batch = collate(examples[step * setup.batch_size:(step + 1) * setup.batch_size])
        real.append(int(batch["attention_mask"].sum()))
        before = phases.seconds["backbone forward"]
        start = time.perf_counter()
        with preset.autocast():
            loss = model(**batch).loss
        phases.seconds["LM head + loss"] += time.perf_counter() - start - (phases.seconds["backbone forward"] - before)
        start = time.perf_counter()
        loss.backward()
        phases.seconds["backward"] += time.perf_counter() - start
        start = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        phases.seconds["optimizer"] += time.perf_counter() - start
        losses.append(loss.item())
        step_ends.append(time.perf_counter())
    return _summary("plain", preset, step_ends, real, phases, losses, model)


def _gap(a: list, b: list) -> float:
    if not a or not b or len(a) != len(b):
        return float("nan")
    return max(abs(x - y) for x, y in zip(a, b))


def _summary(path, preset, step_ends, real, phases, losses, model) -> dict:
    step_seconds = [b - a for a, b in zip(step_ends, step_ends[1:])]
    steps = len(step_seconds)
    timed = sum(step_seconds[1:])  # the first step pays one-off set-up
    tokens = sum(real[1:steps])
    per_step = {name: 1000 * phases.seconds.get(name, 0.0) / steps for name in PHASES if name != "rest"}
    per_step["rest"] = 1000 * sum(step_seconds) / steps - sum(per_step.values())
    n_params = sum(p.numel() for p in model.parameters())
    return {"path": path, "steps": steps, "seconds_per_step": timed / max(steps - 1, 1),
            "real_tokens_per_s": tokens / max(timed, 1e-9), "params": n_params, "losses": losses,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "phases_ms": per_step}


# ---------------------------------------------------------------- evaluation

def run_eval(preset, steps: int) -> dict:
    """Exact match and probe of one trained adapter, evaluated as before (adapter unmerged, no shared prefix or
    contexts) and as the graders do now (merged, shared)."""
    import torch

    from ftcourse import evaluation
    from ftcourse.models import load_adapter_model, load_model_and_tokenizer
    from ftcourse.probe import run_probe
    from ftcourse.tasks import date_task_splits
    from ftcourse.training import SFTSetup, save_sft_artifacts, train_sft

    splits = date_task_splits(preset.n_train, preset.n_eval)
    folder = Path(tempfile.mkdtemp())
    model, tokenizer = load_model_and_tokenizer(preset.model, preset.device)
    setup = SFTSetup(method="lora", max_steps=steps, learning_rate=2e-3, batch_size=preset.batch_size,
                     lora_r=preset.lora_r, lora_alpha=2 * preset.lora_r, layout="grouped", seed=0)
    tuned, result = train_sft(model, tokenizer, splits["train"], setup, preset, folder / "run", progress=False)
    save_sft_artifacts(tuned, tokenizer, result, setup, folder / "artifacts")
    out = {}
    for variant in ("before", "now"):
        # now: as the graders evaluate, the adapter merged into the base, the prompts' shared prefix run once
        model, tokenizer = load_adapter_model(folder / "artifacts" / "adapter", preset.device, base=preset.model,
                                              merge=variant == "now")
        start = time.perf_counter()
        with preset.autocast():
            em, replies = evaluation.exact_match(model, tokenizer, splits["validation"], preset.eval_batch_size,
                                                 share_prefix=variant == "now")
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        with preset.autocast():
            probe = run_probe(model, tokenizer, share_contexts=variant == "now")
        out[variant] = {"seconds": seconds, "exact_match": em, "replies": replies, "probe_seconds": time.perf_counter() - start,
                        "probe_accuracy": probe.accuracy, "probe_perplexity": probe.perplexity}
        del model
        torch.manual_seed(0)
    return out


def main() -> int:
    args, preset = benchmark_args(__doc__, steps=8)
    if args.one:
        row = (run_eval(preset, 12) if args.one == "eval" else run_plain(preset, args.steps) if args.one == "plain"
               else run_trainer_path(args.one, preset, args.steps))
        print("BENCH " + json.dumps(row), flush=True)
        return 0
    from ftcourse.estimator import measure_matmul_flops
    from ftcourse.plots import table

    dtype = preset.autocast_dtype or "float32"
    runs: dict = defaultdict(list)
    for run in range(args.runs):
        for path in (*PATHS, "eval"):
            row = measure_in_child(__file__, "--preset", args.preset, "--steps", str(args.steps), "--one", path)
            if row is None:
                return 1
            runs[path].append(row)
            print(f"run {run + 1}/{args.runs}: {path} done", flush=True)
    roofline = max(measure_matmul_flops(dtype, size=2048, device=preset.device) for _ in range(3))
    rows = []
    for path in PATHS:
        values = runs[path]
        tps = [v["real_tokens_per_s"] for v in values]
        share = [t * 4 * values[0]["params"] / roofline for t in tps]
        rows.append({"path": path, "tokens_per_s_min": min(tps), "tokens_per_s_median": statistics.median(tps),
                     "roofline_share_median": statistics.median(share),
                     "seconds_per_step_median": statistics.median(v["seconds_per_step"] for v in values),
                     "peak_rss_gb": max(v["peak_rss_gb"] for v in values),
                     "final_loss": values[0]["losses"][-1] if values[0]["losses"] else float("nan"),
                     "max_loss_gap": _gap(values[0]["losses"], runs["course_trl_head"][0]["losses"])})
    phase_rows = [{"phase": name, **{path: statistics.median(v["phases_ms"][name] for v in runs[path]) for path in PATHS}}
                  for name in PHASES]
    evals = runs["eval"]
    same = all(e["before"]["replies"] == e["now"]["replies"] for e in evals)
    eval_rows = [{"evaluation": variant, "seconds_min": min(e[variant]["seconds"] for e in evals),
                  "seconds_median": statistics.median(e[variant]["seconds"] for e in evals),
                  "exact_match": evals[0][variant]["exact_match"],
                  "probe_seconds_median": statistics.median(e[variant]["probe_seconds"] for e in evals),
                  "probe_accuracy": evals[0][variant]["probe_accuracy"],
                  "probe_perplexity": evals[0][variant]["probe_perplexity"]} for variant in ("before", "now")]
    header = (f"preset={preset.name} ({preset.describe()}); machine: {platform.processor() or platform.machine()}; "
              f"{args.steps} steps x batch {preset.batch_size}, date task, LoRA r={preset.lora_r} on all linears; "
              f"roofline: {roofline / 1e9:.0f} GFLOP/s ({dtype} matmul 2048x2048); {args.runs} runs")
    text = "\n\n".join([
        table(rows, ["path", "tokens_per_s_min", "tokens_per_s_median", "roofline_share_median",
                     "seconds_per_step_median", "peak_rss_gb", "final_loss", "max_loss_gap"]),
        "max_loss_gap: largest |loss - loss of course_trl_head| over the logged steps (same seed, data and steps); "
        "TRL's defaults log every 10 steps, so over 8 steps they log none (nan).",
        "milliseconds per step, median of the runs:\n" + table(phase_rows, ["phase", *PATHS], floatfmt=".0f"),
        f"exact match, {preset.n_eval} validation prompts, 12 new tokens; predictions identical: {same}\n"
        + table(eval_rows, ["evaluation", "seconds_min", "seconds_median", "exact_match", "probe_seconds_median",
                            "probe_accuracy", "probe_perplexity"])])
    out = write_report(ROOT / "build" / f"benchmark_training_{preset.name}.md", header, text)
    out.with_suffix(".json").write_text(json.dumps(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
