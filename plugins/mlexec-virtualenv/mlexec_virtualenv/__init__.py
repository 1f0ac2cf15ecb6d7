"""mlexec-virtualenv: ``python_env`` projects in cached, locked uv virtualenvs."""

__version__ = "0.1.0"
