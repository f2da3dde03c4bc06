"""User-facing errors: the CLI prints their message (no traceback) and exits with status 1."""


class SftError(Exception):
    """A mistake in the user's input or config, explained by the message alone."""


class ConfigError(SftError):
    pass


class DataError(SftError):
    pass
