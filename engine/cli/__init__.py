"""The `xmodal` command: thin click commands over the Python API; `main` is the console script."""
from xmodal.engine.cli.main import cli, main  # noqa: F401
