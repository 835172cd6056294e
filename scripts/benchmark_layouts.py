"""Benchmark: the same LoRA fine-tune padded, length-grouped and packed; throughput and peak memory.

    python scripts/benchmark_layouts.py --preset cpu [--examples 96]

Each layout runs in its own process (so peak memory is its own): one epoch over the same examples
from the same base weights. Writes build/benchmark_layouts.md and prints it. Not a test: a measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
from pathlib import Path

from bench_io import measure_in_child, write_report

ROOT = Path(__file__).resolve().parent.parent


def run_one(layout: str, preset_name: str, n_examples: int) -> dict:
    import torch

    from ftcourse.models import load_model_and_tokenizer
    from ftcourse.presets import get_preset
    from ftcourse.tasks import date_task_splits
    from ftcourse.training import SFTSetup, layout_run_setup, train_sft

    preset = get_preset(preset_name)
    examples = date_task_splits(max(preset.n_train, n_examples), preset.n_eval)["train"][:n_examples]
    model, tokenizer = load_model_and_tokenizer(preset.model, preset.device)
    setup = layout_run_setup(tokenizer, examples, SFTSetup(method="lora", learning_rate=1e-3,
                             batch_size=preset.batch_size, lora_r=preset.lora_r, lora_alpha=2 * preset.lora_r), layout)
    if preset.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _, result = train_sft(model, tokenizer, examples, setup, preset, ROOT / "build" / "bench" / layout, progress=False)
    row = {"layout": layout, "steps": result.steps, "padding_fraction": result.padding_fraction,
           "real_tokens_per_s": result.real_tokens_per_s,
           "seconds_per_step": sum(result.step_seconds[1:]) / max(len(result.step_seconds) - 1, 1),
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if preset.device == "cuda":
        row["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import warnings

        warnings.filterwarnings("ignore")
        print("BENCH " + json.dumps(run_one(args.one, args.preset, args.examples)), flush=True)
        return 0
    from ftcourse.plots import table
    from ftcourse.presets import get_preset

    preset = get_preset(args.preset)
    rows = []
    for layout in ("padded", "grouped", "packed"):
        row = measure_in_child(__file__, "--preset", args.preset, "--examples", str(args.examples), "--one", layout)
        if row is None:
            return 1
        rows.append(row)
    bound = 1 / (1 - rows[0]["padding_fraction"])
    for row in rows:
        row["speedup"] = row["real_tokens_per_s"] / rows[0]["real_tokens_per_s"]
        row["share_of_bound"] = row["speedup"] / bound if row["layout"] != "padded" else float("nan")
    columns = ["layout", "steps", "seconds_per_step", "padding_fraction", "real_tokens_per_s", "speedup",
               "share_of_bound", "peak_rss_gb"] + (["peak_gpu_gb"] if "peak_gpu_gb" in rows[0] else [])
    text = table(rows, columns)
    header = (f"preset={preset.name} ({preset.describe()}), {args.examples} examples, machine: "
              f"{platform.processor() or platform.machine()}, padding bound {bound:.3f}x")
    write_report(ROOT / "build" / f"benchmark_layouts_{preset.name}.md", header, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
