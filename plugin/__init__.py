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
    ShardBusy,
    StoreError,
)
from plugin.search import CIRSearch, Hit, ItemRef
from plugin.store import open_embedded

__all__ = ["CIRSearch", "Hit", "ItemRef", "open_embedded", "PluginError", "SearchError", "StoreError", "BadQuery",
           "BadFilter", "ItemNotFound", "ItemImageMissing", "ItemImageUnavailable", "CollectionUnusable",
           "BundleMismatch", "BackendUnavailable", "ShardBusy"]
