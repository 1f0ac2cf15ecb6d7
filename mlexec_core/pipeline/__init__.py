"""The run pipeline: resolve a plan, prepare, track, submit, wait."""
