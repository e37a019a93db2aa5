"""Ingest: the raw table contract, loading the CSV files, dated snapshots and their feed."""
