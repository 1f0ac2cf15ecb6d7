"""Pod logs: streamed as they come, and resumed without repeats when the connection drops."""

from __future__ import annotations


import mlexec_core

from mlexec_kubernetes.logs import TimestampedLog, parse_time

NS = "ml"


def _collect(after=None):
    out = []
    return TimestampedLog(out.append, after=after), out


def test_text_passes_through_as_it_arrives():
    log, out = _collect()
    log.feed(b"2026-01-01T00:00:01.5Z epoch 1\n2026-01-01T00:00:02")  # the next time is cut in two
    assert b"".join(out) == b"epoch 1\n"
    log.feed(b".25Z 40% |####")  # a line without its newline yet (a progress bar) is shown at once
    assert b"".join(out) == b"epoch 1\n40% |####"
    log.feed(b"###| 100%\n")
    assert b"".join(out) == b"epoch 1\n40% |#######| 100%\n"
    assert log.last == (parse_time(b"2026-01-01T00:00:02Z")[0], 250_000_000)


def test_a_resumed_stream_skips_what_was_printed():
    first, out = _collect()
    first.feed(b"2026-01-01T00:00:01.1Z a\n2026-01-01T00:00:01.123456789Z b\n")
    again = TimestampedLog(out.append, after=first.last)
    again.feed(b"2026-01-01T00:00:01.1Z a\n2026-01-01T00:00:01.123456789Z b\n2026-01-01T00:00:01.2Z c\n")
    assert b"".join(out) == b"a\nb\nc\n"


def test_times_compare_by_value_not_text():
    assert parse_time(b"2026-01-01T00:00:01.12Z") < parse_time(b"2026-01-01T00:00:01.123Z")
    assert parse_time(b"2026-01-01T01:00:00+01:00") == parse_time(b"2026-01-01T00:00:00Z")
    assert parse_time(b"not a time") is None


def test_dropped_log_stream_resumes_without_repeats(in_process, k8s_project, fake_cluster, store, capsys, tmp_path):
    fake_cluster.drop_logs = 1  # the first log stream breaks after its first line

    def scenario(c, ns, job):
        pod = c.start_pod(ns, job)
        c.log(ns, pod, "line 1\n")
        c.wait_for(lambda c: len(c.log_requests()) >= 2)
        c.log(ns, pod, "line 2\n")
        c.finish_pod(ns, pod, 0)
        c.job_condition(ns, job, "Complete")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    mlexec_core.run(str(proj), backend="kubernetes", backend_config=str(proj / "backend_config.yaml"),
                    plugins=in_process())
    assert capsys.readouterr().out == "line 1\nline 2\n"
    first, second = fake_cluster.log_requests()[:2]
    assert first["timestamps"] == ["true"] and "sinceSeconds" not in first
    assert "sinceSeconds" in second
    run = store.only_run()
    assert run.info.status == "FINISHED"
    kept = store.client.download_artifacts(run.info.run_id, "mlexec/output.log", str(tmp_path))
    assert open(kept).read() == "line 1\nline 2\n"  # the pod's log is kept with the run
