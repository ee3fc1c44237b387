"""Ingest: walk a folder, decode photos and read text corpora, run them through an encoder in batches."""
