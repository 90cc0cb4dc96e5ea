"""One exception type for bad user input, so every entry point can map it to exit code 2."""


class InputError(ValueError):
    """A file, field or argument is not what was expected; the message names it."""


def check_known(raw: dict, cls: type, source: str) -> dict:
    """Reject keys that are not fields of the dataclass `cls`, naming them and the known ones."""
    names = set(cls.__dataclass_fields__)
    unknown = sorted(set(raw) - names)
    if unknown:
        raise InputError(f"{source}: unknown key(s) {unknown}; known: {sorted(names)}")
    return raw
