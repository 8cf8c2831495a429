class EncoderError(Exception):
    """Bad input or a bad bundle on the serving side. The message says what was wrong and what to do."""
