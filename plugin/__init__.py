"""CIRSearch: composed image retrieval over a Qdrant collection (no torch)."""

from plugin.errors import (
    BackendUnavailable,
    BadFilter,
    BadQuery,
    BundleMismatch,
    CollectionUnusable,
    ItemImageMissing,
    ItemImageUnavailable,
    ItemNotFound,
    PluginError,
    SearchError,
    StoreError,
)
from plugin.search import CIRSearch, Hit, ItemRef

__all__ = ["CIRSearch", "Hit", "ItemRef", "PluginError", "SearchError", "StoreError", "BadQuery", "BadFilter",
           "ItemNotFound", "ItemImageMissing", "ItemImageUnavailable", "CollectionUnusable", "BundleMismatch",
           "BackendUnavailable"]
