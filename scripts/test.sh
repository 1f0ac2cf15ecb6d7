#!/usr/bin/env bash
# Set up .venv and run the whole test suite (core and plugins).
#
# Run as root outside CI, it first provisions what the plugins' tests need on this
# machine (plugins/*/ci-setup.sh: a Docker engine, the offline test images, a
# registry ...); a setup that fails is reported and its tests skip, saying why.
# MLEXEC_TEST_SETUP=0 skips that step. In CI (.ci/run, CI=true) the setups have
# already run, and a missing piece makes its tests fail instead of skip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(id -u)" = 0 ] && [ -z "${CI:-}" ] && [ "${MLEXEC_TEST_SETUP:-1}" != 0 ]; then
  for setup in plugins/*/ci-setup.sh; do
    [ -f "$setup" ] || continue
    echo "--- $setup (MLEXEC_TEST_SETUP=0 to skip)"
    bash "$setup" || echo "warning: $setup failed; the tests that need it will skip" >&2
  done
fi
paths=(tests)
for plugin in plugins/*/; do
  [ -d "$plugin/tests" ] && paths+=("$plugin/tests")
done
exec .venv/bin/python -m pytest "${paths[@]}" "$@"
