#!/usr/bin/env bash
# Create .venv with mlexec (editable), its plugins and the test/example dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check uv
packages=(-e '.[test]')
for plugin in plugins/*/; do
  [ -f "$plugin/pyproject.toml" ] || continue
  if grep -Eq '^test *= *\[' "$plugin/pyproject.toml"; then
    packages+=(-e "${plugin%/}[test]")   # the plugin's test-only dependencies too
  else
    packages+=(-e "$plugin")
  fi
done
.venv/bin/python -m uv pip install --quiet --python .venv/bin/python "${packages[@]}"
echo "mlexec is ready: . .venv/bin/activate && mlexec --help"
