"""CIRSearch: composed image retrieval over a Qdrant collection (no torch)."""

from plugin.search import CIRSearch, Hit, ItemRef, SearchError
from plugin.store import StoreError

__all__ = ["CIRSearch", "Hit", "ItemRef", "SearchError", "StoreError"]
