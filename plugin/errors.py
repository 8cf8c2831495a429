"""The plugin's errors, by what went wrong rather than by message text, so that callers (the HTTP
service, the command line, the indexer) can tell a bad query from a backend in trouble.

    PluginError
    ├── SearchError                a query that cannot be answered
    │   ├── BadQuery               the caller's input: k, an unreadable image, an unknown weight name...
    │   │   └── BadFilter          a payload filter that is not {field: value or [values]}
    │   ├── ItemNotFound           an ItemRef whose item is not in the collection
    │   │   └── ItemImageMissing   ... or is, but has no readable stored image (the catalog's fault)
    │   └── ItemImageUnavailable   an ItemRef whose image could not be fetched (http off, or the fetch failed)
    ├── StoreError                 a Qdrant-side problem: schema, settings, an old server
    └── (both SearchError and StoreError)
        ├── CollectionUnusable     missing, not made by dqe-cir, or of a design this version does not know
        ├── BundleMismatch         indexed with another bundle than the one in use
        └── BackendUnavailable     a Qdrant call failed
            └── ShardBusy          the embedded engine's collection is open in another process (transient)
"""

from __future__ import annotations


class PluginError(Exception):
    """Every error the plugin raises; the message says what was wrong and what to do."""


class SearchError(PluginError):
    """A query that cannot be answered."""


class StoreError(PluginError):
    """A Qdrant-side problem: a missing collection, a schema or fingerprint mismatch, an old Qdrant."""


class BadQuery(SearchError):
    """The caller's input is wrong (k, the number of texts, an unreadable image, a weight name, ...)."""


class BadFilter(BadQuery):
    """A payload filter the plugin cannot turn into a Qdrant filter."""


class ItemNotFound(SearchError):
    """A reference given by item id that the collection does not hold."""


class ItemImageMissing(ItemNotFound):
    """A reference item without a readable image: no stored uri, its file gone or not an image. The catalog's
    fault, not the caller's; the message names the item, never a server path."""


class ItemImageUnavailable(SearchError):
    """A reference item whose image is at an http(s) uri that this searcher does not (allow_http off) or could
    not fetch: the server's side, not the caller's."""


class CollectionUnusable(SearchError, StoreError):
    """The collection is missing, was not created by dqe-cir, or records a design this version does not know."""


class BundleMismatch(SearchError, StoreError):
    """The collection was indexed with another bundle: its embeddings are not comparable with this one's."""


class BackendUnavailable(SearchError, StoreError):
    """A Qdrant call failed (a server that is down, or answers with an error)."""


class ShardBusy(BackendUnavailable):
    """An embedded (edge) collection held by another process: worth a retry once that process lets go."""


def bundle_mismatch(collection: str, indexed_with: str, bundle: str) -> BundleMismatch:
    """The one message for a collection and a bundle that do not belong together."""
    return BundleMismatch(f"collection {collection} was indexed with bundle {indexed_with}, but this bundle is "
                          f"{bundle}: embeddings would not be comparable. Re-index with this bundle, or load the "
                          "bundle the collection was built with")
