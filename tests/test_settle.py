"""SubmittedJob.settle: a job's end is recorded once, by the first call, from any thread,
also for a job class written without ``super().__init__()`` (as plugins may be)."""

from __future__ import annotations

import re
import sys
import threading
import types

import pytest

from mlexec_core.pipeline.plan import RunStatus
from mlexec_core.plugin.interfaces import SubmittedJob
from mlexec_core.testing import ROOT


class ThirdPartyJob(SubmittedJob):
    """Written as a plugin author might: no ``super().__init__()``, its own state only."""

    def __init__(self):
        self.polls = 0

    def wait(self):
        return self.settled

    def get_status(self):
        return self.settled or RunStatus.RUNNING

    def cancel(self, signum=None):
        self.settle(RunStatus.KILLED, "stopped by the user")


ENDS = [
    (RunStatus.FAILED, "the command exited with status 3", 3),
    (RunStatus.KILLED, "stopped by the user", None),
]


@pytest.fixture
def many_switches():
    """Switch threads as often as the interpreter can, so two racing calls interleave."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_the_first_settle_wins_and_later_ones_change_nothing():
    job = ThirdPartyJob()
    assert job.settled is None and job.get_status() is RunStatus.RUNNING
    assert job.settle(RunStatus.FAILED, "the command exited with status 3", exit_code=3) is True
    assert job.settle(RunStatus.KILLED, "stopped by the user") is False
    job.cancel()
    assert job.settle(RunStatus.FINISHED, exit_code=0) is False
    assert job.settled is job.get_status() is job.wait() is RunStatus.FAILED
    assert job.failure_reason == "the command exited with status 3" and job.exit_code == 3


def test_settling_from_two_threads_at_once_gives_exactly_one_end(many_switches):
    for _ in range(300):
        job = ThirdPartyJob()  # a fresh job each time: its lock is made by the racing calls themselves
        start = threading.Barrier(2)
        won: dict[int, bool] = {}

        def end(index):
            start.wait()
            status, reason, code = ENDS[index]
            won[index] = job.settle(status, reason, exit_code=code)

        threads = [threading.Thread(target=end, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(won.values()) == [False, True]
        first = ENDS[won[1]]  # the call that returned True is the one that came first
        assert (job.settled, job.failure_reason, job.exit_code) == first
        assert job.get_status() is job.wait() is first[0]
        assert "_settle_lock_" in vars(job)


def test_what_settle_records_and_what_it_leaves_alone():
    job = ThirdPartyJob()
    job.pending_reason = "Priority"
    job.failure_reason = "left as it was"
    assert job.settle(RunStatus.FINISHED, "not a failure", exit_code=0)
    assert (job.exit_code, job.failure_reason, job.pending_reason) == (0, "left as it was", None)
    other = ThirdPartyJob()
    assert other.settle(RunStatus.KILLED, "stopped by the user")
    assert other.exit_code is None  # not given: the class default stays
    assert "exit_code" not in vars(other) and SubmittedJob.exit_code is None
    assert SubmittedJob.settled.__get__(ThirdPartyJob()) is None  # nothing shared between jobs


def test_only_an_end_can_be_settled():
    job = ThirdPartyJob()
    for status in (RunStatus.SCHEDULED, RunStatus.RUNNING):
        with pytest.raises(ValueError, match=status.value):
            job.settle(status)
    assert job.settled is None


class FakeRemote:
    """The client the guide's example talks to: a job that ends when told to, or is deleted."""

    def __init__(self):
        self.ended = threading.Event()
        self.code = None
        self.deleted = []

    def exit_code(self, job_id, timeout):
        return self.code if self.ended.wait(timeout) else None

    def delete(self, job_id):
        self.deleted.append(job_id)


def guide_example() -> types.ModuleType:
    text = (ROOT / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"```python\n(# example: settle\n.*?)```", text, re.S)
    assert len(blocks) == 1
    module = types.ModuleType("settle_example")
    exec(compile(blocks[0], "docs/plugins.md (settle example)", "exec"), module.__dict__)
    return module


def test_the_guides_example_ends_once_whoever_comes_first():
    RemoteJob = guide_example().RemoteJob
    remote = FakeRemote()
    job = RemoteJob(remote, "j1")
    waiter = threading.Thread(target=lambda: setattr(job, "result", job.wait()))
    waiter.start()
    job.cancel()
    waiter.join(10)
    assert not waiter.is_alive() and job.result is RunStatus.KILLED
    assert (job.failure_reason, remote.deleted) == ("stopped by the user", ["j1"])
    remote.code = 3
    remote.ended.set()
    job.cancel()  # after the end: nothing more
    assert job.get_status() is RunStatus.KILLED and remote.deleted == ["j1"] and job.exit_code is None

    remote = FakeRemote()
    remote.code = 3
    remote.ended.set()
    job = RemoteJob(remote, "j2")
    assert job.wait() is RunStatus.FAILED
    job.cancel()
    assert (job.get_status(), job.failure_reason, job.exit_code) == (
        RunStatus.FAILED, "the command exited with status 3", 3)
    assert remote.deleted == []
