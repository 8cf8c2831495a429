class IndexerError(Exception):
    """A catalog or indexing-job problem. The message says what was wrong and what to do."""
