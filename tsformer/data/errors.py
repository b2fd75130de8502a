"""The error every reader raises on bad input."""


class DataError(ValueError):
    """Bad input data; the message names the file and the row or column."""
