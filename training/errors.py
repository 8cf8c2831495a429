class TrainingError(Exception):
    """Anything wrong on the training side: data files, configs, checkpoints. The message says
    what was wrong (file, field) and what to do about it."""
