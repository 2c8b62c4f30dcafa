"""Batch scoring of PACS export folders: walker, chunked tasks, idempotent result files."""
