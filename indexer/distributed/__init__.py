"""Indexing beyond one process: the work split into shards, embedded on Ray workers, merged by the driver."""
