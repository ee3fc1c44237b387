"""Reranking: the cross-attention fusion model, its scoring and fusion, the backends behind one protocol, BLIP, explanations."""
