"""User-facing errors: the CLI prints these as one line and exits with code 2."""


class DarhtError(Exception):
    """A problem with the user's input (bad file, bad config, unknown name), not a bug."""
