"""Duplicate photos: kNN candidate pairs from the library's vectors (candidates), confirmed by a perceptual
hash and a small pixel comparison read from the files (confirm), grouped with a suggested copy to keep
(groups); finder.py runs the three over a library. Nothing is ever deleted."""
