"""The one exception type the command line turns into a readable message instead of a traceback."""


class MedftError(Exception):
    """Bad input or an unusable environment: the message names the problem and the fix."""
