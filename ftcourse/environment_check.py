"""The versions the course was tested with, and the check a notebook's setup cell runs.

What must match comes from the package's own declared dependencies (pyproject.toml, read back through
`importlib.metadata`): the libraries the course teaches are exact pins and must be those versions; torch,
matplotlib, ipywidgets, numpy are taken as the kernel has them (Colab's CUDA torch stays) and must only meet
their lower bound, with the tested version printed beside a different one for information.
"""

from __future__ import annotations

import re
from importlib import metadata

# The versions of requirements.txt (tests/test_environment.py checks that they agree), for the information line.
TESTED = {
    "torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2", "trl": "1.16.0", "datasets": "5.2.0",
    "accelerate": "1.15.0", "bitsandbytes": "0.50.2", "matplotlib": "3.11.2", "ipywidgets": "8.1.9",
}


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])


def parse_requirement(line: str) -> tuple[str, str, str] | None:
    """('name', '==' or '>=', 'version') of a requirement line, lower-cased name; None for anything else
    (comments, other operators, extras and markers, which are not the course's)."""
    match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*(==|>=)\s*([^\s;,#]+)", line)
    return (match.group(1).lower(), match.group(2), match.group(3)) if match and ";" not in line else None


def declared_requirements(package: str = "ftcourse") -> dict[str, tuple[str, str]]:
    """{name: (operator, version)} of the package's declared dependencies ('==' or '>=')."""
    return {parsed[0]: parsed[1:] for parsed in map(parse_requirement, metadata.requires(package) or []) if parsed}


def check_versions(required: dict[str, tuple[str, str]] | None = None) -> list[str]:
    """Print what differs from the tested set; return the requirements that are not met ('name==x', 'name>=y')."""
    from .install import install_advice

    unmet, notes = [], []
    for name, (op, version) in (required or declared_requirements()).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed is None or (op == "==" and installed.split("+")[0] != version) or (
                op == ">=" and _version_tuple(installed) < _version_tuple(version)):
            unmet.append(f"{name}{op}{version}")
            print(f"  {name}: installed {installed or 'nothing'}, needs {op}{version}")
        elif op == ">=" and name in TESTED and installed.split("+")[0] != TESTED[name]:
            notes.append((name, installed))
    if notes:
        print(f"In use as this kernel has them: {', '.join(f'{n} {v}' for n, v in notes)} (the course was tested "
              f"with {', '.join(f'{n} {TESTED[n]}' for n, _ in notes)}).")
    if not unmet:
        print("All tested versions installed.")
    else:
        print(f"{len(unmet)} requirement(s) not met. To fix: {install_advice(unmet)}.")
    return unmet
