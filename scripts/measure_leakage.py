"""The leakage measurement of notebook 02 §7 over several training seeds (CPU preset).

For each seed: the notebook's reference configs (Exercise 2.2: LoRA r=16 on every linear, lr 2e-3,
grouped batches, the step budget: 24 steps) trained on the shipped dump's clean rows, and again on
the clean rows plus the leaked rows (16 test items, each verbatim and twice reworded); both evaluated on the
test split's leaked and unseen items, exact match and per-item answer loss (`leakage_comparison`). The
notebook prints one seed; this is the spread behind its claim.
    python scripts/measure_leakage.py --seeds 0,1,2 --out build/measure_leakage.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(seed: int) -> dict:
    from ftcourse import evaluation
    from ftcourse.data_quality import DataError, leakage_comparison, normalize_text, parse_chat_row, prompt_and_answer, shipped_dump
    from ftcourse.estimator import ALL_LINEAR
    from ftcourse.models import load_model, load_tokenizer
    from ftcourse.notebook import seed_everything
    from ftcourse.presets import get_preset
    from ftcourse.tasks import Example
    from ftcourse.training import recipe_configs, train_recipe

    preset = get_preset("cpu")
    seed_everything(seed)
    tokenizer = load_tokenizer(preset.model)
    lines, labels, test_split = shipped_dump()
    rows = {}
    for i, line in enumerate(lines):
        try:
            rows[i] = parse_chat_row(line, i)
        except DataError:
            pass
    clean_rows = [rows[i] for i in sorted(rows) if labels[i] == "ok"]  # what a perfect cleaning keeps
    leaked_rows = [rows[i] for i in sorted(rows) if labels[i] == "leaked"]
    leaked_norm = {normalize_text(prompt_and_answer(r)[0]) for r in leaked_rows}
    parts = {"leaked": [e for e in test_split if normalize_text(e.prompt) in leaked_norm],
             "unseen": [e for e in test_split if normalize_text(e.prompt) not in leaked_norm]}
    lora, sft = recipe_configs(  # the reference solution of Exercise 2.2, at this seed
        {"r": preset.lora_r, "lora_alpha": 2 * preset.lora_r, "target_modules": list(ALL_LINEAR)},
        {"max_steps": preset.step_budget, "learning_rate": 2e-3, "per_device_train_batch_size": preset.batch_size,
         "lr_scheduler_type": "cosine", "warmup_steps": 2, "seed": seed}, preset, "grouped", ROOT / "build" / "measure_leakage")
    scores = {}
    for name, data in (("clean", clean_rows), ("leaky", clean_rows + leaked_rows)):
        model, _ = train_recipe(load_model(preset.model, preset.device, seed=seed), tokenizer,
                                [Example(*prompt_and_answer(r)) for r in data], lora, sft, preset, progress=False)
        with preset.autocast():
            scores[name] = {part: {"exact_match": evaluation.exact_match(model, tokenizer, items, preset.eval_batch_size)[0],
                                   "losses": evaluation.answer_losses(model, tokenizer, items, preset.eval_batch_size)}
                            for part, items in parts.items()}
    result = leakage_comparison(scores["leaky"], scores["clean"])
    return {"seed": seed, **{f"em_{model}_{part}": scores[model][part]["exact_match"] for model in scores for part in parts},
            "log_ratio_leaked": result["leaked"], "log_ratio_unseen": result["unseen"], "memory": result["memory"],
            "memory_se": result["memory_se"]}


def table(path: Path) -> str:
    from ftcourse.plots import table as format_table

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        row["memory factor"] = math.exp(row["memory"])
    return format_table(rows, ["seed", "em_leaky_leaked", "em_clean_leaked", "em_leaky_unseen", "em_clean_unseen",
                               "log_ratio_leaked", "log_ratio_unseen", "memory", "memory_se", "memory factor"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "measure_leakage.jsonl")
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args()
    if not args.table:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for seed in (int(s) for s in args.seeds.split(",")):
            start = time.time()
            row = measure(seed) | {"seconds": round(time.time() - start)}
            print(json.dumps(row), flush=True)
            with args.out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    print(table(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
