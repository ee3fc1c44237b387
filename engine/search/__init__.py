"""Search: the engine behind the CLI, the Python API and the web server."""
