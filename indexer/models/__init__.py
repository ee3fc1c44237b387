"""Pure torch model code (no file I/O). Weights are loaded by indexer.encoders."""
