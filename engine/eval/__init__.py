"""Evaluation: Recall@K, caption datasets, the recall and speed benchmarks."""
