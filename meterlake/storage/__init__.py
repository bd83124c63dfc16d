"""The Parquet lake: layout, the atomic writer, scans with partition pruning, compaction and the
DuckDB catalogue. ``storage`` imports only ``config``.
"""
