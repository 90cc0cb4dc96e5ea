"""Files written atomically (a reader never sees half a file) and config files read with one clear error."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from lightgen.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary sibling of `path`; on success it replaces `path` in one rename, so
    readers never see a half-written file (and dot-names never match a sample or shard pattern). The file
    gets the mode a plain `open` would (0644 under the usual umask), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)` inside `atomic_path(path)`."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def writable_dir(path: str | os.PathLike, field: str) -> Path:
    """Create `path` and prove it writable before any long job starts, or raise an InputError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / ".write-test"):
            pass
    except OSError as e:
        raise InputError(f"{field}: {path} is not a writable directory ({e.strerror or e})") from None
    return path


def read_yaml(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A YAML file holding a mapping (empty file: {}); anything else is an InputError naming the file."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"{path}: cannot read the {what} ({e})") from e
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of {what} options")
    return raw
