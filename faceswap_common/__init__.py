"""Shared plumbing for the pipeline: typed params, Parquet schemas, atomic IO, image decoding, faces."""
