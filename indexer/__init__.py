"""Catalog indexing into Qdrant: catalog sources, in-process and Celery re-index jobs, the worker
tasks (`celery -A indexer worker`), settings and `doctor`'s checks."""

from indexer.errors import IndexerError

__all__ = ["IndexerError"]
