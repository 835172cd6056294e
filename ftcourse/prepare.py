"""One-time set-up after install: convert the embedded model, then warm the graders' base references.

`python -m ftcourse.prepare` (run by `make setup`). Both results are caches under `$FTCOURSE_CACHE`:
deleting them only makes the next run slower.
"""

from __future__ import annotations

import time


def main() -> None:
    start = time.perf_counter()
    from .models import embedded_model_dir

    path = embedded_model_dir()
    print(f"embedded model ready: {path} ({time.perf_counter() - start:.1f} s)")
    from .grading import warm_base_references

    warm_base_references()
    print(f"grader base references ready ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
