"""Tests that need infrastructure (a Docker engine, a Slurm cluster, another Python ...),
and the closing summary of what was missing.

A test or fixture that finds a piece missing calls :func:`missing_infrastructure`
with a stable label for the piece (``"Slurm cluster"``), why (``"no Slurm
controller answers (...)"``) and how to get it (``"run as root: bash
plugins/mlexec-slurm/ci-setup.sh"``).  The test skips, or fails when ``$CI`` is
set (CI provisions everything, so a missing piece there is an error).

At the end of the run, above pytest's closing line, a ``missing infrastructure``
section names each missing piece, how many tests skipped for it and how to get
it, so that a run which skipped a whole suite does not look like a clean one.  It
also repeats the provisioning scripts that failed before the tests
(``scripts/test.sh`` passes them in :data:`SETUP_FAILED_VAR`), whose warnings
would otherwise have scrolled away.

This module is a pytest plugin; ``pytest_plugins = ["mlexec_core.testing"]``
loads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

#: Set by ``scripts/test.sh``: one line per provisioning script that failed,
#: ``script<TAB>exit status<TAB>file holding its output``.
SETUP_FAILED_VAR = "MLEXEC_TEST_SETUP_FAILED"

#: The key of a skipped test's report ``user_properties`` entry: ``(piece, reason, how)``.
PROPERTY = "mlexec.missing_infrastructure"


class MissingInfrastructure(pytest.skip.Exception):  # type: ignore[misc,name-defined]
    """A skip that names the missing piece of infrastructure (``piece``) and how to get it (``how``)."""

    def __init__(self, piece: str, reason: str, how: str) -> None:
        super().__init__(f"{reason}; to get it: {how}" if how else reason)
        self.piece = piece
        self.reason = reason
        self.how = how


def missing_infrastructure(piece: str, reason: str, *, how: str = "", fail_in_ci: bool = True) -> NoReturn:
    """Skip the test because ``piece`` is missing (fail instead when ``$CI`` is set).

    :param piece: a stable label, the same for every test that needs the piece
        (``"Docker engine"``, ``"Slurm cluster"``); the closing summary counts by it.
    :param reason: what was found missing, as specific as it can be.
    :param how: how to get it (``"run as root: bash plugins/mlexec-slurm/ci-setup.sh"``).
    :param fail_in_ci: ``False`` for what CI does not provide either (an opt-in
        real cluster): such tests skip under ``$CI`` too.
    """
    __tracebackhide__ = True
    if fail_in_ci and os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error{': ' + how if how else ''})", pytrace=False)
    raise MissingInfrastructure(piece, reason, how)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    exc = call.excinfo.value if call.excinfo is not None else None
    if isinstance(exc, MissingInfrastructure):
        # A new list: the report's is the item's own, shared by its other phases.
        report.user_properties = [*report.user_properties, (PROPERTY, (exc.piece, exc.reason, exc.how))]
        if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:  # "Skipped: ...", as pytest.skip's
            report.longrepr = (*report.longrepr[:2], f"Skipped: {exc.msg}")
    return report


def _missing(stats) -> dict[str, dict]:
    """Per piece, in the order first seen: how many tests skipped, how to get it, the first reason."""
    pieces: dict[str, dict] = {}
    for report in stats.get("skipped", []):
        for key, value in getattr(report, "user_properties", ()):
            if key != PROPERTY:
                continue
            piece, reason, how = value
            entry = pieces.setdefault(piece, {"count": 0, "how": how, "reason": reason})
            entry["count"] += 1
    return pieces


def _failed_setups() -> list[tuple[str, str, str]]:
    failed = []
    for line in os.environ.get(SETUP_FAILED_VAR, "").splitlines():
        parts = line.split("\t")
        if parts and parts[0].strip():
            failed.append((parts[0], parts[1] if len(parts) > 1 else "?", parts[2] if len(parts) > 2 else ""))
    return failed


def _last_lines(path: str, count: int = 3) -> list[str]:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if line.strip()][-count:]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The outermost wrapper: what it prints comes after every other summary (the short
    test summary too), just above pytest's closing line."""
    result = yield
    _summarize(terminalreporter)
    return result


def _summarize(terminalreporter) -> None:
    pieces = _missing(terminalreporter.stats)
    failed = _failed_setups()
    if not pieces and not failed:
        return
    tr = terminalreporter
    tr.section("missing infrastructure", sep="=", yellow=True, bold=True)
    for script, status, log in failed:
        tr.line(f"{script} failed before the tests (exit {status}); the tests that need what it provides "
                "skipped. Its last lines:", yellow=True)
        for line in _last_lines(log):
            tr.line(f"    {line}")
        if log:
            tr.line(f"    (all of its output: {log})")
    for piece, entry in sorted(pieces.items(), key=lambda item: -item[1]["count"]):
        count = entry["count"]
        reason = " ".join(entry["reason"].split())  # one line, however the tool said it
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        tr.line(f"{piece}: {count} test{'s' if count != 1 else ''} skipped ({reason})", yellow=True)
        if entry["how"]:
            tr.line(f"    to get it: {entry['how']}")
