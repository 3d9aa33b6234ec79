"""The one exception type the command line turns into a single sentence and a non-zero exit code."""


class UserError(Exception):
    """A problem with what the user gave us (a path, a config key, a checkpoint), not a bug of ours."""
