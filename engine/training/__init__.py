"""Training of the lite model's alignment heads (and later the reranker) on cached tower features."""
