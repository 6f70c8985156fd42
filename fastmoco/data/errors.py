class DataError(ValueError):
    """Missing, empty or unreadable data; the CLI prints it as one line."""
