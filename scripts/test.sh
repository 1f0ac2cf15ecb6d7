#!/usr/bin/env bash
# Set up .venv and run the whole test suite (core and plugins).
#
# Run as root outside CI, it first provisions what the plugins' tests need on this
# machine (plugins/*/ci-setup.sh: a Docker engine, the offline test images, a
# registry ...); a setup that fails is reported and its tests skip, saying why.
# MLEXEC_TEST_SETUP=0 skips that step. The run ends by naming each missing piece
# of infrastructure, how many tests skipped for it and how to get it, and repeats
# the setups that failed (with their last lines). In CI (.ci/run, CI=true) the
# setups have already run, and a missing piece makes its tests fail instead of skip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
failed=""  # the setups that failed: "script<TAB>status<TAB>output file" lines, for the closing summary
if [ "$(id -u)" = 0 ] && [ -z "${CI:-}" ] && [ "${MLEXEC_TEST_SETUP:-1}" != 0 ]; then
  logs=$(mktemp -d "${TMPDIR:-/tmp}/mlexec-test-setup.XXXXXX")
  for setup in plugins/*/ci-setup.sh; do
    [ -f "$setup" ] || continue
    echo "--- $setup (MLEXEC_TEST_SETUP=0 to skip)"
    log="$logs/$(basename "$(dirname "$setup")").log"
    set +e
    bash "$setup" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" != 0 ]; then
      echo "warning: $setup failed; the tests that need it will skip (the end of the run says so again)" >&2
      failed+="$setup"$'\t'"$status"$'\t'"$log"$'\n'
    else
      rm -f "$log"
    fi
  done
  rmdir "$logs" 2>/dev/null || true
fi
export MLEXEC_TEST_SETUP_FAILED="$failed"  # mlexec_core/testing/infrastructure.py repeats them at the end
paths=(tests)
for plugin in plugins/*/; do
  [ -d "$plugin/tests" ] && paths+=("$plugin/tests")
done
exec .venv/bin/python -m pytest "${paths[@]}" "$@"
