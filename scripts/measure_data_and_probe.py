"""Measurements the course's thresholds come from (CPU preset, the date task of notebook 03).

- **Probe spread:** the reference LoRA recipe of Exercise 3.2 (r16, alpha 32, lr 2e-3, 12 steps, grouped) with
  training seeds 0-4: the general probe's accuracy and perplexity move from seed to seed; the regression
  gates (probe accuracy drop <= 0.03, perplexity ratio <= 1.15) are set against that spread.
- **How much data:** the same recipe on the first n distinct training examples (n = 16 ... 400): validation
  exact match and answer loss; `ftcourse.decision.MIN_DEMONSTRATIONS` comes from it.
- **Forgetting:** a full fine-tune at full-fine-tuning rates (2e-5, 1e-4) for the same 12 steps, notebook 03 §5.

Each run is evaluated as the grader evaluates, under the preset's autocast (bf16 on a CPU with AVX512-BF16, else
float32: the `path` column). Each run appends one JSON line to `--out` and prints it; `--table` prints the table
of a results file.
    python scripts/measure_data_and_probe.py --out build/measure_demos.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ("base:0:0:0:0,lora:2e-3:12:0:400,full:2e-5:12:0:400,full:1e-4:12:0:400,lora:2e-3:12:1:400,lora:2e-3:12:2:400,"
        "lora:2e-3:12:0:16,lora:2e-3:12:0:32,lora:2e-3:12:0:64,lora:2e-3:12:3:400,lora:2e-3:12:4:400,lora:2e-3:12:0:128")


def measure(out: Path, runs: str) -> None:
    import torch

    from ftcourse import evaluation
    from ftcourse.models import load_model, load_tokenizer
    from ftcourse.presets import get_preset
    from ftcourse.probe import run_probe
    from ftcourse.tasks import date_task_splits
    from ftcourse.training import SFTSetup, train_sft

    preset = get_preset("cpu")
    tokenizer = load_tokenizer(preset.model)
    splits = date_task_splits(preset.n_train, preset.n_eval)
    out.parent.mkdir(parents=True, exist_ok=True)
    for kind, lr, steps, seed, n in (r.split(":") for r in runs.split(",")):  # kind:lr:steps:seed:n_examples
        start = time.time()
        if kind == "base":
            model, losses = load_model(preset.model, preset.device, seed=0), []
        else:
            setup = SFTSetup(method=kind, max_steps=int(steps), learning_rate=float(lr), batch_size=preset.batch_size,
                             lora_r=preset.lora_r, lora_alpha=2 * preset.lora_r, layout="grouped", seed=int(seed))
            model, result = train_sft(load_model(preset.model, preset.device, seed=int(seed)), tokenizer,
                                      splits["train"][:int(n)], setup, preset, ROOT / "build" / "measure", progress=False)
            losses = result.losses
        with torch.no_grad(), preset.autocast():  # as the grader evaluates (a no-op in float32)
            probe = run_probe(model, tokenizer)
            em, _ = evaluation.exact_match(model, tokenizer, splits["validation"], preset.eval_batch_size)
            val_loss = evaluation.answer_loss(model, tokenizer, splits["validation"])
        row = {"path": preset.autocast_dtype or "float32",
               "kind": kind, "lr": float(lr), "steps": int(steps), "seed": int(seed), "n": int(n),
               "probe_accuracy": probe.accuracy, "probe_perplexity": probe.perplexity, "em": em, "val_loss": val_loss,
               "losses": [round(x, 4) for x in losses], "seconds": round(time.time() - start)}
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


def table(path: Path) -> str:
    from ftcourse.plots import table as fmt

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        r.setdefault("path", "float32")  # rows written before the path was recorded
    bases = {r["path"]: r for r in rows if r["kind"] == "base"}  # each run against the base of its own path
    for r in rows:
        base = bases.get(r["path"])
        r["probe_drop"] = base["probe_accuracy"] - r["probe_accuracy"] if base else None
        r["ppl_ratio"] = r["probe_perplexity"] / base["probe_perplexity"] if base else None
    cols = ["path", "kind", "lr", "steps", "seed", "n", "em", "val_loss", "probe_accuracy", "probe_drop", "ppl_ratio"]
    return fmt(rows, cols, floatfmt=".4g")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "measure_demos.jsonl")
    parser.add_argument("--runs", default=RUNS)
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args()
    if not args.table:
        measure(args.out, args.runs)
    print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
