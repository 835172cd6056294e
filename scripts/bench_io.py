"""What the benchmark scripts share: one measurement in a fresh process, and the report they write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


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
