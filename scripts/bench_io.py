"""What the benchmark and measurement scripts share: one measurement in a fresh process, the report they write,
where a row was measured, and the loop that appends one JSON row per run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def benchmark_args(doc: str, steps: int):
    """A benchmark's command line (`--preset`, `--steps`, `--runs`, and `--one`, the one measurement a child makes),
    with warnings silenced: (args, the preset)."""
    import argparse
    import warnings

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from ftcourse.presets import get_preset

    return args, get_preset(args.preset)


def measure_in_child(script: str, *args: str) -> dict | None:
    """Run `script *args` in a fresh Python (so peak memory is its own); its `BENCH {json}` line, or None."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCH ")), None)
    if line is None:
        print(proc.stderr[-3000:])
        return None
    return json.loads(line[6:])


def write_report(out: Path, header: str, text: str) -> Path:
    """The report as markdown at `out` (a fenced table under its header), printed as well."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"{header}\n\n```\n{text}\n```\n")
    print(header)
    print(text)
    print(f"written to {out}")
    return out


def machine() -> dict:
    """Where and with what a row was measured."""
    import platform

    import peft
    import torch
    import trl

    from ftcourse.presets import get_preset

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu, "threads": torch.get_num_threads(),
            "dtype": "bf16" if get_preset("cpu").bf16 else "fp32", "torch": torch.__version__, "trl": trl.__version__,
            "peft": peft.__version__}


def measure_runs(runs: str, steps: int, out: Path, append: bool, measure: Callable[[str, int], dict],
                 report: Callable[[str, dict], str]) -> None:
    """Each comma-separated run (`run@N`: N steps instead of `steps`) measured, its row (with `machine()`) appended
    to `out` as one JSON line, and `report(run, row)` printed; `out` starts afresh unless `append`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if not append:
        out.write_text("")
    where = machine()
    for run in runs.split(","):
        row = measure(run.split("@")[0], int(run.split("@")[1]) if "@" in run else steps) | where
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(report(run, row), flush=True)
