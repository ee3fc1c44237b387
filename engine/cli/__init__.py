"""The `xmodal` command: thin click commands over the Python API, one module per command group;
`main.main` is the console script."""
