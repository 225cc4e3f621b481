"""The one exception the data package raises for bad or missing data files."""


class DataError(ValueError):
    """A data file is missing, truncated, corrupt or fails its checksum.

    The message names the file (or the folders searched) and says what is wrong, so a user can
    fix it without reading the source. A ``ValueError`` so that generic handlers still catch it.
    """
