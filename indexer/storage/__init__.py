"""Storage: what a library keeps on disk. The SQLite store (store.py, its schema and migrations in
schema.py), FAISS vector indexes (vector_index.py) with their choice and tuning, stored vectors, patch and
token stores, the library that holds them (library.py), check and repair, reindex."""
