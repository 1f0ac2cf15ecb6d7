"""Integrity: a repair never overwrites a run that has ended.

A repair reads the runs in flight, then asks whether each one's mlexec is still alive.
A run whose mlexec recorded FINISHED and exited between those two steps looks orphaned;
ending it must be a compare-and-set that leaves the recorded status alone.  The CLI tests
drive many real mlexec processes against one real sqlite store with repairs alongside;
the unit tests make the interleaving happen on purpose, for both kinds of store
(the direct sqlite writer, and ``MlflowClient`` as used for a tracking server).
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from mlexec_core.testing import MLEXEC, assert_no_traceback

RUN_LINE = re.compile(r"^=== Run ([0-9a-f]{32}) (succeeded|failed|killed)", re.M)


def _reported(text: str) -> dict[str, str]:
    """What one mlexec printed about how its runs ended: ``{run_id: FINISHED | FAILED | KILLED}``."""
    word = {"succeeded": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
    return {run_id: word[how] for run_id, how in RUN_LINE.findall(text)}


def _start(cli_env, tmp_path, args, name):
    out = tmp_path / f"{name}.txt"
    with open(out, "wb") as f:
        proc = subprocess.Popen([*MLEXEC, *map(str, args)], cwd=tmp_path, env=cli_env,
                                stdout=f, stderr=subprocess.STDOUT)
    return proc, out


def _repairing(cli_env, tmp_path, rounds):
    """`mlexec runs repair` in a loop, alongside the runs."""
    script = f"for i in $(seq {rounds}); do {' '.join(MLEXEC)} runs repair; done"
    out = tmp_path / "repairs.txt"
    with open(out, "wb") as f:
        proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=cli_env, stdout=f,
                                stderr=subprocess.STDOUT)
    return proc, out


def _single_runs(cli_env, tmp_path, project, count, name):
    """``count`` runs started at once, half of them ending at once, half a little later."""
    procs, outputs = [], []
    for i in range(count):
        proc, out = _start(cli_env, tmp_path, ["run", project, "-P", f"i={i}", "-P", f"nap={0.3 if i % 2 else 0.05}",
                                               "--env-manager", "local"], f"{name}-{i}")
        procs.append(proc)
        outputs.append(out)
    return procs, outputs


@pytest.fixture
def varied(project):
    # some runs end at once, some a little later: repairs look at every moment of a run's end
    return project("""
        name: varied
        entry_points:
          main:
            parameters: {i: int, nap: {type: float, default: 0.05}}
            command: "sleep {nap}; echo run {i}"
    """)


def _check_every_run_as_reported(store, outputs):
    reported: dict[str, str] = {}
    for out in outputs:
        text = out.read_text()
        assert "Traceback" not in text, text
        reported.update(_reported(text))
    runs = {r.info.run_id: r for r in store.runs()}
    assert set(reported) <= set(runs)
    wrong = {run_id: (how, runs[run_id].info.status, runs[run_id].data.tags.get("mlexec.failureReason"))
             for run_id, how in reported.items() if runs[run_id].info.status != how}
    assert not wrong, f"runs recorded otherwise than their mlexec reported: {wrong}"
    failed = [r.info.run_id for r in runs.values() if r.info.status == "FAILED"]
    assert not failed, f"runs marked FAILED: {failed}"
    return reported, runs


def test_concurrent_runs_and_repairs_never_mark_a_finished_run_failed(store, cli_env, tmp_path, varied):
    store.runs()
    repairs, repair_out = _repairing(cli_env, tmp_path, 40)
    outputs = []
    try:
        for round_ in range(3):
            procs, outs = _single_runs(cli_env, tmp_path, varied, 16, f"run-{round_}")
            outputs += outs
            for proc in procs:
                assert proc.wait(180) == 0
    finally:
        repairs.wait(300)
    reported, runs = _check_every_run_as_reported(store, outputs)
    assert len(reported) == 48 == len(runs)
    assert set(reported.values()) == {"FINISHED"}
    assert "marked" not in repair_out.read_text()
    assert "Traceback" not in repair_out.read_text()


def test_two_sweeps_single_runs_and_repairs_into_one_store(store, cli_env, tmp_path, varied):
    store.runs()
    repairs, repair_out = _repairing(cli_env, tmp_path, 25)
    outputs, procs = [], []
    try:
        for k in range(2):
            proc, out = _start(cli_env, tmp_path, ["sweep", varied, "-P", "i=range(0, 10)", "-P", "nap=0.05,0.3",
                                                   "--max-parallel", "4", "--env-manager", "local"], f"sweep-{k}")
            procs.append(proc)
            outputs.append(out)
        singles, outs = _single_runs(cli_env, tmp_path, varied, 12, "run")
        procs += singles
        outputs += outs
        for proc in procs:
            assert proc.wait(300) == 0
    finally:
        repairs.wait(300)
    for out in outputs[:2]:
        assert "20 finished" in out.read_text(), out.read_text()
    _, runs = _check_every_run_as_reported(store, outputs[2:])
    statuses = [r.info.status for r in runs.values()]
    assert len(statuses) == 2 * (1 + 20) + 12
    assert set(statuses) == {"FINISHED"}, sorted(statuses)
    assert "marked" not in repair_out.read_text()


# -- the interleaving, made to happen ---------------------------------------------------------------


def _stores(store):
    from mlexec_core.builtins.mlflow.client import ClientStore
    from mlexec_core.builtins.mlflow.sqlite import SqliteStore

    return {"sqlite": SqliteStore.open(store.uri, fallback=lambda: ClientStore(store.uri)),
            "client": ClientStore(store.uri)}


def _orphan_to_be(store, tracking):
    """A RUNNING run supervised by a live process (a real ``sleep``), as mlexec records it."""
    from mlexec_core import supervisor

    sup = subprocess.Popen(["sleep", "60"])
    started = supervisor.process_start(sup.pid)
    host = supervisor.hostname()
    tags = {supervisor.HOST_TAG: host, supervisor.PID_TAG: str(sup.pid), supervisor.STARTED_TAG: started,
            supervisor.LIVE_TAG: f"{host} {sup.pid} {started}"}
    experiment = store.client.get_experiment_by_name("Default").experiment_id
    run_id, _ = tracking.create_run(experiment, "racing", tags, {})
    return run_id, sup


def _ends_and_exits(tracking, run_id, sup):
    """What the run's own mlexec does: record FINISHED, then exit."""
    assert tracking.finish(run_id, "FINISHED", {}) is True
    sup.kill()
    sup.wait()


def _interleave(tracking, method, act):
    """Make ``act`` happen right after the store's ``method`` next returns (however it is called:
    by the repair, or by the store itself)."""
    inner = getattr(tracking, method)

    def call(*args, **kwargs):
        result = inner(*args, **kwargs)
        del tracking.__dict__[method]  # once
        act()
        return result

    setattr(tracking, method, call)
    return tracking


@pytest.mark.parametrize("kind", ["sqlite", "client"])
def test_a_run_that_ends_after_live_runs_and_before_the_write_keeps_its_status(store, kind):
    from mlexec_core import supervisor

    tracking = _stores(store)[kind]
    run_id, sup = _orphan_to_be(store, tracking)
    # the repair reads the runs in flight; then the run's mlexec ends it and exits; then the
    # repair finds its supervisor gone
    racing = _interleave(tracking, "live_runs", lambda: _ends_and_exits(tracking, run_id, sup))
    assert supervisor.repair(racing) == []
    run = store.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "mlexec.failureReason" not in run.data.tags
    assert supervisor.LIVE_TAG not in run.data.tags


def test_on_a_server_the_status_is_read_again_just_before_it_is_written(store):
    """``MlflowClient`` has no conditional update: the status is read after the liveness check,
    and again after the reason tag is written, right before the status is."""
    from mlexec_core import supervisor

    tracking = _stores(store)["client"]
    run_id, sup = _orphan_to_be(store, tracking)
    sup.kill()
    sup.wait()
    # the run ends (by another writer) while the repair writes its reason
    racing = _interleave(tracking, "set_tags", lambda: store.client.set_terminated(run_id, "FINISHED"))
    assert supervisor.repair(racing) == []
    assert store.client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("kind", ["sqlite", "client"])
def test_a_run_whose_mlexec_is_gone_is_still_repaired(store, kind):
    from mlexec_core import supervisor

    tracking = _stores(store)[kind]
    run_id, sup = _orphan_to_be(store, tracking)
    sup.kill()
    sup.wait()
    [repaired] = supervisor.repair(tracking)
    assert (repaired.run_id, repaired.status, repaired.kind) == (run_id, "FAILED", "orphaned")
    run = store.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["mlexec.failureReason"].startswith("mlexec exited unexpectedly")


@pytest.mark.parametrize("kind", ["sqlite", "client"])
def test_a_kept_failed_status_never_overwrites_a_finished_one_written_later(store, kind, mlexec, tmp_path,
                                                                           monkeypatch):
    from mlexec_core import supervisor

    pending = tmp_path / "pending"
    monkeypatch.setenv(supervisor.PENDING_VAR, str(pending))
    tracking = _stores(store)[kind]
    run_id, sup = _orphan_to_be(store, tracking)
    # the store was unreachable when the run failed: its status was kept locally ...
    assert supervisor.save_pending(store.uri, run_id, "FAILED", None, int(time.time() * 1000),
                                   {"mlexec.failureReason": "the command exited with status 1"}) is not None
    # ... and before any repair wrote it, a later command ran the same run again, to its end
    _ends_and_exits(tracking, run_id, sup)
    proc = mlexec("runs", "repair", env={supervisor.PENDING_VAR: str(pending)}, check=0)
    assert proc.returncode == 0, proc.stderr
    assert_no_traceback(proc)
    assert "the FAILED kept locally was not written: the run had ended FINISHED meanwhile" in proc.stdout
    run = store.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "mlexec.failureReason" not in run.data.tags
    assert not list(pending.glob("*.json"))


def test_a_kept_status_is_written_while_the_run_is_still_in_flight(store, tmp_path, monkeypatch):
    from mlexec_core import supervisor

    monkeypatch.setenv(supervisor.PENDING_VAR, str(tmp_path / "pending"))
    tracking = _stores(store)["sqlite"]
    run_id, sup = _orphan_to_be(store, tracking)
    sup.kill()
    sup.wait()
    supervisor.save_pending(store.uri, run_id, "FAILED", None, 1234, {"mlexec.failureReason": "exit 3"})
    [repaired] = supervisor.repair(tracking)
    assert (repaired.status, repaired.kind) == ("FAILED", "late")
    run = store.client.get_run(run_id)
    assert (run.info.status, run.info.end_time) == ("FAILED", 1234)
    assert run.data.tags["mlexec.failureReason"] == "exit 3"
