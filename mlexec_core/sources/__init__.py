"""Project sources that are not a directory used in place: git remotes and archives.

:func:`mlexec_core.pipeline.source.fetch` decides what a URI is and hands it to
one of these modules, which bring the project into the source cache
(:mod:`~mlexec_core.sources.cache`) and return the directory to run in:

* :mod:`~mlexec_core.sources.urls`: what a URI is, and how to show it without its password;
* :mod:`~mlexec_core.sources.git`: a bare mirror per remote, fetched incrementally,
  and a work tree per commit (submodules checked out) reused by later runs;
* :mod:`~mlexec_core.sources.archive`: ``.zip`` / ``.tar.gz`` archives, local or
  over http(s), checked entry by entry and extracted once per content hash.
"""
