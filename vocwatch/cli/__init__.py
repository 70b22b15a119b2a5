"""The command line: ``main`` parses, then runs one module per command (``vocwatch.cli.<command>``)."""
