"""The MLproject model: what a project declares, loaded and checked."""
