"""The ``mlexec`` command line."""
