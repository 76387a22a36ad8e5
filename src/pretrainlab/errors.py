"""User-facing errors: a mistake in a path, config or data prints one clear line and exits 2."""


class UserError(Exception):
    """A problem the user can fix. The message says what is wrong and how to fix it."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or override is malformed, misspelled or has a wrong type."""


class DataError(UserError):
    """Input data is missing, empty or unreadable."""
