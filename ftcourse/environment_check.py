"""The versions the course was tested with, and a check a notebook's setup cell runs."""

from __future__ import annotations

from importlib import metadata

# Keep in step with requirements.txt (tests/test_environment.py checks that they agree).
TESTED = {
    "torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2", "trl": "1.16.0", "datasets": "5.2.0",
    "accelerate": "1.15.0", "bitsandbytes": "0.50.2", "matplotlib": "3.11.2", "ipywidgets": "8.1.9",
}


def check_versions(required: dict[str, str] | None = None) -> list[str]:
    """Print installed vs tested versions; return the packages that differ or are missing."""
    from .install import install_advice

    differ = []
    for name, tested in (required or TESTED).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed.split("+")[0] != tested:
            differ.append(name)
            print(f"  {name}: installed {installed}, tested {tested}" + ("" if installed == "missing" else " (may still work)"))
    if not differ:
        print("All tested versions installed.")
    else:
        print(f"{len(differ)} package(s) differ from the tested set. To install the tested ones: {install_advice()}.")
    return differ
