"""Every run's output is shown live and kept with the run as ``mlexec/output.log``."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mlexec_core.pipeline.output import ARTIFACT_PATH, RunOutput, output_cap
from mlexec_core.testing import MLEXEC, assert_no_traceback

PROJECT = """
name: talk
entry_points:
  main:
    command: "echo out-1; echo err-1 >&2; echo out-2; echo PYTHONUNBUFFERED=$PYTHONUNBUFFERED"
  fail:
    command: "echo before-failing; echo why >&2; exit 4"
  loud:
    command: "python -c \\"import sys; [print('line', i) for i in range(20000)]\\""
  slow:
    command: "echo started; sleep 60; echo never"
"""


def output_log(store, run, tmp_path) -> str:
    assert ARTIFACT_PATH in [f"mlexec/{a.path.rsplit('/', 1)[-1]}"
                             for a in store.client.list_artifacts(run.info.run_id, "mlexec")]
    dest = tmp_path / f"dl-{run.info.run_id}"
    dest.mkdir()
    return Path(store.client.download_artifacts(run.info.run_id, ARTIFACT_PATH, str(dest))).read_text()


def test_output_is_shown_and_kept_for_a_finished_run(mlexec, project, store, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = mlexec("run", project(PROJECT), "--env-manager", "local", env={"TMPDIR": str(tmp)}, check=0)
    assert_no_traceback(proc)
    assert "out-1" in proc.stdout and "out-2" in proc.stdout and "err-1" in proc.stderr
    assert "err-1" not in proc.stdout  # stdout and stderr stay apart on the terminal
    run = store.only_run()
    log = output_log(store, run, tmp_path)
    lines = log.splitlines()
    # each stream in its order; between stdout and stderr, in the order they arrived
    assert [line for line in lines if line.startswith("out-")] == ["out-1", "out-2"]
    assert "err-1" in lines
    assert "PYTHONUNBUFFERED=1" in log  # a Python job's prints show as they happen
    assert not list(tmp.iterdir())  # the log's temporary file is gone once stored


def test_output_is_kept_for_a_failed_run(mlexec, project, store, tmp_path):
    mlexec("run", project(PROJECT), "-e", "fail", "--env-manager", "local", check=4)  # the command's own status
    run = store.only_run()
    assert run.info.status == "FAILED"
    assert sorted(output_log(store, run, tmp_path).splitlines()) == ["before-failing", "why"]


def test_output_is_kept_for_a_killed_run(project, store, cli_env, tmp_path):
    proc = subprocess.Popen([*MLEXEC, "run", str(project(PROJECT)), "-e", "slow", "--env-manager", "local"],
                            env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    seen = ""
    while "started" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    run = store.only_run()
    assert run.info.status == "KILLED"
    assert output_log(store, run, tmp_path).splitlines() == ["started"]


def test_a_huge_output_keeps_its_head_and_tail(mlexec, project, store, tmp_path):
    proc = mlexec("run", project(PROJECT), "-e", "loud", "--env-manager", "local",
                  env={"MLEXEC_OUTPUT_CAP": "8K"}, check=0)
    assert proc.stdout.count("line ") == 20000  # the terminal shows all of it
    log = output_log(store, store.only_run(), tmp_path)
    assert log.startswith("line 0\nline 1\n")
    assert log.endswith("line 19998\nline 19999\n")
    assert "bytes of output left out here" in log
    assert len(log.encode()) < 8 * 1024 + 200


def test_run_output_caps_head_and_tail_exactly():
    out = RunOutput(echo=None, cap_bytes=40)  # 10 bytes of head, 30 of tail
    for i in range(100):
        out.write(f"{i:03d}\n".encode())
    path = out.close()
    data = path.read_bytes()
    head, _, rest = data.partition(b"\n[mlexec: ")
    assert head == b"000\n001\n00"
    stream = b"".join(f"{i:03d}\n".encode() for i in range(100))
    assert rest.split(b"]\n", 1)[1] == stream[-30:]
    assert out.truncated == 400 - 40
    out.discard()
    assert not path.exists()


def test_run_output_last_lines_and_echo():
    shown = []
    out = RunOutput(echo=lambda data, stream: shown.append((stream, data)))
    out.write(b"one\ntwo\n")
    out.write(b"progress 10%\rprogress 50%", "stderr")
    assert out.last_line == "progress 50%"
    assert out.tail(2) == ["two", "progress 50%"]
    assert shown == [("stdout", b"one\ntwo\n"), ("stderr", b"progress 10%\rprogress 50%")]
    assert out.close().read_bytes() == b"one\ntwo\nprogress 10%\rprogress 50%"
    out.write(b"after close\n")  # still shown, no longer kept
    assert shown[-1] == ("stdout", b"after close\n")
    out.discard()


def test_run_output_is_safe_from_many_threads():
    out = RunOutput(echo=None)
    threads = [threading.Thread(target=lambda n=n: [out.write(f"{n}:{i}\n".encode()) for i in range(500)])
               for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.close().read_text().splitlines()
    assert sorted(lines) == sorted(f"{n}:{i}" for n in range(8) for i in range(500))
    out.discard()


def test_nothing_printed_means_no_log_file():
    out = RunOutput(echo=None)
    assert out.close() is None and out.log_path is None


@pytest.mark.parametrize("raw, expected", [("", 16 * 1024 * 1024), ("2M", 2 * 1024 * 1024), ("64K", 65536),
                                           ("5000", 5000), ("junk", 16 * 1024 * 1024), ("10", 1024)])
def test_output_cap_setting(raw, expected):
    assert output_cap({"MLEXEC_OUTPUT_CAP": raw}) == expected


def test_a_follower_attached_while_output_flows_misses_no_line(tmp_path):
    """``tee`` swaps the echo between two writes and replays what came before: whenever a live
    copy is attached, it holds every line from its replayed start to the end, with no gap."""
    for attempt in range(20):
        out = RunOutput(echo=None, directory=tmp_path)
        attached = threading.Event()
        written = []

        def produce():
            i = 0
            while not attached.is_set() or i < written[0] + 300:  # flowing before, during and after
                out.write(f"{i}\n".encode())
                time.sleep(0)  # let the attaching thread in (the lock is not fair)
                if attached.is_set() and not written:
                    written.append(i)
                i += 1
            written.append(i)

        writer = threading.Thread(target=produce)
        writer.start()
        time.sleep(0.002 * (attempt % 5))
        seen: list[bytes] = []
        out.tee(lambda echo: (lambda data, stream: seen.append(data)), replay=50)
        attached.set()
        writer.join(10)
        lines = [int(x) for x in b"".join(seen).split()]
        assert lines == list(range(lines[0], written[-1])), f"attempt {attempt}: a line is missing or repeated"
        assert len(lines) >= 300
        out.discard()


def test_tee_that_changes_nothing_replays_nothing(tmp_path):
    shown: list[tuple[bytes, str]] = []
    out = RunOutput(echo=lambda data, stream: shown.append((data, stream)), directory=tmp_path)
    out.write(b"before\n")
    out.tee(lambda echo: echo)
    out.write(b"after\n")
    assert shown == [(b"before\n", "stdout"), (b"after\n", "stdout")]
    out.discard()
