"""Errors that mean "the user has something to fix", rendered the same everywhere.

A :class:`MlexecError` carries a one-line message, optional context (the file,
the key in that file) and a hint saying what to do.  The CLI prints it as one
readable block and exits with :attr:`MlexecError.exit_code`; any other
exception reaching the CLI is a bug in mlexec (or a plugin) and shows a
traceback.
"""

from __future__ import annotations


class MlexecError(Exception):
    """A problem the user can fix.  Never a bug."""

    exit_code = 2

    def __init__(self, message: str, *, context: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.context = context
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.context}: {self.message}" if self.context else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class ProjectError(MlexecError):
    """The MLproject (or a file it names) is malformed."""


class ParameterError(MlexecError):
    """A ``-P`` value or a parameter declaration is invalid."""


class UsageError(MlexecError):
    """A command-line option or API argument is invalid."""


class PluginError(MlexecError):
    """A plugin is missing, misbehaving or conflicts with another."""


class EnvironmentBuildError(MlexecError):
    """An environment could not be prepared (solver, installer, interpreter)."""


class BackendError(MlexecError):
    """A backend could not start or supervise the job (daemon down, cluster refused)."""


class TrackingError(MlexecError):
    """The tracking store refused or could not be reached."""


class RunFailed(MlexecError):
    """The run ended FAILED or KILLED (Python API, ``synchronous=True``)."""

    exit_code = 1

    def __init__(self, submitted) -> None:
        status = submitted.status.value if submitted.status else "FAILED"
        reason = f": {submitted.failure_reason}" if submitted.failure_reason else ""
        super().__init__(f"run {submitted.run_id} {status.lower()}{reason}")
        self.submitted = submitted
