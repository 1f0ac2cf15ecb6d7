"""Plugins that ship with mlexec, registered through the same hooks as any other."""
