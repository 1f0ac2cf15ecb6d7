"""mlexec's version: the one place it is written.

A leaf module (it imports nothing), so that whatever needs the version
(``--version``, the plugin list, the parse cache's stamp) can import it
without importing the package root.  ``pyproject.toml`` reads it from here
(``[tool.hatch.version]``).
"""

__version__ = "0.1.0"
