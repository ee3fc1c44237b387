"""xmodal read path: query, rerank, serve, CLI."""
