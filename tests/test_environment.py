"""environment.yml reuses requirements.txt, and the versions the notebooks check agree with it."""

import re
from pathlib import Path

from ftcourse.environment_check import TESTED

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def test_every_requirement_is_pinned():
    lines = [l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    unpinned = [l for l in lines if "==" not in l]
    assert not unpinned, f"unpinned requirements: {unpinned}"


def test_environment_yml_reuses_requirements_and_python_311():
    text = (ROOT / "environment.yml").read_text()
    assert re.search(r"-\s*python=3\.11\b", text)
    assert "-r requirements.txt" in text
    # conda must not pin any package itself, or the two files could disagree
    conda_pins = re.findall(r"^\s*-\s*([a-z0-9_\-]+)[=<>]", text, flags=re.M)
    assert set(conda_pins) <= {"python"}, conda_pins


def test_notebook_version_check_matches_requirements():
    p = pins()
    for name, version in TESTED.items():
        assert p.get(name) == version, f"{name}: notebooks check {version}, requirements.txt pins {p.get(name)}"


def test_torch_installed_first_and_constrained():
    setup = (ROOT / "scripts" / "setup_env.sh").read_text()
    torch_line = setup.index("torch==")
    rest_line = setup.index("-r requirements.txt")
    assert torch_line < rest_line
    assert "--constraint requirements.txt" in setup or "-c requirements.txt" in setup
