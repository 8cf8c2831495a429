"""The plugin's error type: every problem a caller of CIRSearch can meet is a SearchError (store problems
are StoreError, in plugin.store)."""


class SearchError(Exception):
    """Bad query input or a collection that cannot be searched with this bundle."""
