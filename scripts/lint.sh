#!/usr/bin/env bash
# `make lint`: ruff over the Python, mypy over tlsprof/ (both configured in pyproject.toml), and
# the formatting: `ruff format --check` and clang-format (.clang-format) over hooks/.
# FORMAT_CHECK=0 skips the formatting (a work-in-progress tree).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PY_DIRS=(tlsprof tests bench examples)

"$PY" -m ruff check "${PY_DIRS[@]}"
"$PY" -m mypy
if [ "${FORMAT_CHECK:-1}" = 1 ]; then
    "$PY" -m ruff format --check "${PY_DIRS[@]}"
    clang-format --dry-run --Werror hooks/*.c hooks/*.h
    echo "lint: clean, formatting checked"
else
    echo "lint: clean (formatting not checked: FORMAT_CHECK=0)"
fi
