"""One exception type for bad user input, so every entry point can map it to exit code 2."""


class InputError(ValueError):
    """A file, field or argument is not what was expected; the message names it."""
