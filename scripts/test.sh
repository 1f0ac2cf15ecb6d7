#!/usr/bin/env bash
# Set up .venv and run the whole test suite (core and plugins).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
paths=(tests)
for plugin in plugins/*/; do
  [ -d "$plugin/tests" ] && paths+=("$plugin/tests")
done
exec .venv/bin/python -m pytest "${paths[@]}" "$@"
