"""Files written atomically (a reader never sees half a file) and config files read with one clear error."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from lightgen.errors import InputError


TEMP_RE = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")  # atomic_path's mkstemp names: .NAME.XXXXXXXX.tmp


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


def check_writable(path: str | os.PathLike, field: str) -> Path:
    """Prove `path` (a directory, made later if missing) writable before any work starts, without creating
    anything: a probe file in its nearest existing ancestor is made and deleted at once. Else an InputError."""
    path = Path(path)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists() or p == p.parent)
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a directory", str(existing))
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise InputError(f"{field}: {path} is not a writable directory ({existing}: {e.strerror or e})") from None
    return path


def writable_dir(path: str | os.PathLike, field: str) -> Path:
    """`check_writable`, then create `path` (call it once every input is validated) and drop the temporary
    files of atomic writes a killed run left in it."""
    path = check_writable(path, field)
    path.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    return path


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete the hidden `.NAME.XXXX.tmp` files of `atomic_path` writes killed between mkstemp and the rename
    (a resumed run calls this once per folder it writes into; they never match a sample pattern but waste
    space). Returns how many were removed."""
    removed = 0
    for p in Path(folder).glob(".*.tmp"):
        if TEMP_RE.fullmatch(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def read_json(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A JSON file holding an object; anything else is an InputError naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: cannot read the {what} as JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected the {what} as a JSON object, got {type(data).__name__}")
    return data


def read_yaml(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A YAML file holding a mapping (empty file: {}); anything else is an InputError naming the file."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(f"{path}: cannot read the {what} ({e})".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of {what} options")
    return raw


EIGHT_BIT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


def open_rgb(source: str | os.PathLike | Any, where: str | os.PathLike, exif_transpose: bool = False):
    """An 8-bit RGB PIL image from a path or file object, or an InputError naming `where`: not an image,
    truncated, or 16-bit / float pixels (mode I;16, I, F), which `convert("RGB")` would clip to white."""
    from PIL import Image, ImageOps

    try:
        with Image.open(source) as im:
            if im.mode not in EIGHT_BIT_MODES:
                raise InputError(f"{where}: {im.mode} pixels (16-bit or float); expected an 8-bit image, "
                                 f"e.g. convert it to 8-bit RGB PNG")
            return (ImageOps.exif_transpose(im) if exif_transpose else im).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{where}: expected a readable image ({e})") from None


def check_output_file(path: str | os.PathLike, field: str) -> Path:
    """An output file path whose folder is writable (made later if missing) and that is not a folder."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{field}: {path} is a directory; expected a file name")
    check_writable(path.parent, field)
    return path


def sha256_file(path: str | os.PathLike, digest=None) -> str:
    """sha256 of a file's bytes, read in blocks (checkpoints are GBs); `digest` continues another hash."""
    digest = digest or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def files_sha256(root: str | os.PathLike, files) -> str:
    """One sha256 over `files` under `root`, in sorted order, each as its relative name, a NUL and its bytes:
    what identifies a pipeline directory or a source checkout (a renamed file changes it too)."""
    root, digest = Path(root), hashlib.sha256()
    for f in sorted(Path(f) for f in files):
        digest.update(f.relative_to(root).as_posix().encode() + b"\0")
        sha256_file(f, digest)
    return digest.hexdigest()

