class IndexerError(Exception):
    """A catalog or indexing-job problem. The message says what was wrong and what to do; a job that ran
    but refused to switch its alias carries its JobReport in `report` (failures, counts, the reason)."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report
