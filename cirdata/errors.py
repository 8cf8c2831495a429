class DataError(Exception):
    """Anything wrong with a data set: a missing or malformed annotation file, an image that cannot be
    read, an unknown protocol. The message says what was wrong (file, field) and what to do about it."""
