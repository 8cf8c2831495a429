"""CIRSearch: composed image retrieval over a Qdrant collection (no torch)."""

from plugin.errors import (
    BackendUnavailable,
    BadFilter,
    BadQuery,
    BundleMismatch,
    CollectionUnusable,
    ItemNotFound,
    PluginError,
    SearchError,
    StoreError,
)
from plugin.search import CIRSearch, Hit, ItemRef

__all__ = ["CIRSearch", "Hit", "ItemRef", "PluginError", "SearchError", "StoreError", "BadQuery", "BadFilter",
           "ItemNotFound", "CollectionUnusable", "BundleMismatch", "BackendUnavailable"]
