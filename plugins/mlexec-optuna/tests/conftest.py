pytest_plugins = ["mlexec_core.testing"]
