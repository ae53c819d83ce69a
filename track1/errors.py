"""The one base class of the errors a user can fix (a bad config, code, file or input): the command
line prints them as one line and exits 2; anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """A problem the user can fix; its message is one line that names the file, key or value."""


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used."""
