"""A docker_env job that exits with a retryable status starts again into the same run, in a new
container, and finds what the last attempt left in the run's checkpoint folder (mounted at the
same path).  The real CLI and the real engine."""

from __future__ import annotations

from mlexec_core.testing import assert_no_traceback

BB = "image: mlexec-test/busybox:1"

COUNT = ('n=$(cat $MLEXEC_CHECKPOINT_DIR/n 2>/dev/null || echo 0); echo attempt=$MLEXEC_ATTEMPT n=$n; '
         'echo $((n+1)) > $MLEXEC_CHECKPOINT_DIR/n; test "$MLEXEC_ATTEMPT" = 3 || exit 75')


def test_each_attempt_is_a_new_container_that_sees_the_runs_checkpoints(mlexec, docker_project, store,
                                                                       busybox_image, tmp_path):
    proj = docker_project(BB, f"main: {{command: '{COUNT}'}}")
    proc = mlexec("run", proj, "--restart-on-exit", "75", env={"XDG_STATE_HOME": str(tmp_path / "state")},
                  check=0)
    assert_no_traceback(proc)
    assert [line for line in proc.stdout.splitlines() if line.startswith("attempt=")] == \
        ["attempt=1 n=0", "attempt=2 n=1", "attempt=3 n=2"]
    run = store.only_run()
    assert run.info.status == "FINISHED" and run.data.tags["mlexec.attempt"] == "3"
