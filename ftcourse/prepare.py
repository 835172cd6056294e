"""One-time set-up after install: convert the embedded model, decide the CPU preset's autocast, warm the references.

`python -m ftcourse.prepare` (run by `make setup`). Both results are caches under `$FTCOURSE_CACHE`:
deleting them only makes the next run slower. The references warmed are those of the public validation
splits and, for tests, CI and `make course`, those of the public test seed's held-out splits (signed with
it); a class graded with the instructor's own secret computes its own once, in the grader's cache.
"""

from __future__ import annotations

import os
import time


def main() -> None:
    start = time.perf_counter()
    from .models import embedded_model_dir

    path = embedded_model_dir()
    print(f"embedded model ready: {path} ({time.perf_counter() - start:.1f} s)")
    from .presets import cpu_bf16_autocast

    print(f"CPU preset autocast on this machine: {'bf16' if cpu_bf16_autocast() else 'float32'} "
          "(measured once, cached; see ftcourse.presets.cpu_bf16_autocast)")
    import warnings

    warnings.filterwarnings("ignore")
    from .grading import secret
    from .grading.evaluate import warm_references
    from .presets import get_preset

    os.environ.update(secret.public_test_env())
    preset = get_preset("auto")
    warm_references(preset, secret.heldout_seed())
    print(f"base-model references ready ({time.perf_counter() - start:.1f} s)")
    import shutil

    from .distill import teacher_dir
    from .grading.evaluate import distill_teacher, distill_teacher_dir

    trained = distill_teacher_dir(preset) / distill_teacher(preset, "validation", None)[2]["sha256"][:16]
    if trained.is_dir() and not teacher_dir(preset).is_dir():  # notebook 09's copy: it need not train its own
        shutil.copytree(trained, teacher_dir(preset), ignore=shutil.ignore_patterns("trainer"))
        print(f"notebook 09's teacher ready: {teacher_dir(preset)}")


if __name__ == "__main__":
    main()
