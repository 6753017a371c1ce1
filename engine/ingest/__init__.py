"""Ingest: the Ray Data job (driver side in `job`, worker side in `worker`)."""
