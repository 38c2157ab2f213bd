"""The one base error, in a module that imports nothing: the command line needs it before torch loads."""


class AdaptforgeError(Exception):
    """Base class of every error adaptforge raises on bad input; the message says what to fix."""
