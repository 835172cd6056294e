#!/usr/bin/env bash
# Run nbgrader with the course's configuration: `scripts/nbgrader.sh autograde 03_sft`.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PATH="$ROOT/.venv/bin:$PATH"   # nbgrader runs alembic from PATH
cd "$ROOT/autograder"
exec nbgrader "$@"
