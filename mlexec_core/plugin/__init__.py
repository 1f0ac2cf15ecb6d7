"""The plugin contract: hook specifications, interfaces and the manager.

A plugin's ``plugin.py`` needs only what this package exports:
``@hookimpl`` for its hook functions and :class:`Registration` for what its
registration hooks return.
"""

import pluggy

from mlexec_core.plugin.registration import Registration

#: Decorate hook implementations with ``@hookimpl``.
hookimpl = pluggy.HookimplMarker("mlexec")

__all__ = ["Registration", "hookimpl"]
