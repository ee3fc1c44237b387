"""Storage: the SQLite store, FAISS vector indexes and their choice and tuning, patch and token stores, the library that holds them, check and repair, reindex."""
