"""xmodal write path: walk, decode, encode, store, build indexes."""
