"""The plugin contract: hook specifications, interfaces and the manager."""

import pluggy

#: Decorate hook implementations with ``@hookimpl``.
hookimpl = pluggy.HookimplMarker("mlexec")

__all__ = ["hookimpl"]
