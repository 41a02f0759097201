"""The one exception the data package raises for problems with the user's data or arguments."""


class DataError(Exception):
    """Bad data or a bad data argument. The message names the problem and the fix on one line."""
