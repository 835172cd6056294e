#!/usr/bin/env bash
# Create .venv with the course's pinned dependencies. Idempotent; `make` calls it when requirements change.
# torch goes in first and requirements.txt then constrains everything, so no package can swap torch for
# another build (on a CPU machine that would be a multi-GB CUDA download).
set -euo pipefail
cd "$(dirname "$0")/.."
# Prefer a system-wide Python 3.11: the grader runs learner code as an unprivileged user, who must be able to
# run the interpreter (one under a private home folder, e.g. pyenv's in /root, is out of its reach).
for candidate in /usr/bin/python3.11 /usr/local/bin/python3.11 "$(command -v python3.11)" "$(command -v python3)"; do
  if [ -z "${PYTHON:-}" ] && [ -n "$candidate" ] && [ -x "$candidate" ]; then PYTHON="$candidate"; fi
done
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PY=.venv/bin/python
# uv finds a local torch wheel only where UV_FIND_LINKS names the folder pip knows as PIP_FIND_LINKS.
export UV_FIND_LINKS="${UV_FIND_LINKS:-${PIP_FIND_LINKS:-}}"
[ -n "$UV_FIND_LINKS" ] || unset UV_FIND_LINKS
if ! .venv/bin/uv --version >/dev/null 2>&1; then
  "$PY" -m pip install -q uv || true
fi
if .venv/bin/uv --version >/dev/null 2>&1; then
  install() { .venv/bin/uv pip install -q --compile-bytecode --python "$PY" "$@"; }
else
  install() { "$PY" -m pip install -q "$@"; }
fi
install "$(grep -E '^torch==' requirements.txt)"
install -r requirements.txt --constraint requirements.txt
install --no-deps -r requirements-embedded.txt
install --no-deps -e .
"$PY" -m ftcourse.prepare
