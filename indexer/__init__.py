"""Catalog indexing into Qdrant: in-process jobs now; the Celery app comes with the worker tasks."""

from indexer.errors import IndexerError

__all__ = ["IndexerError"]
