"""Atomic file writes: a file is either its old content or its complete new content, never a mix.

Every writer goes through :func:`atomic_write`: the bytes are written to a temporary file in the
target's own folder (same filesystem), flushed and ``fsync``-ed, given the permissions a normal
``open(path, "w")`` would have, then renamed over the target with ``os.replace`` (atomic on POSIX
and Windows). A failure or a kill at any point leaves the target untouched and, except for a hard
kill, no temporary file behind (temporary names start with ``.`` and end with ``.tmp``).
"""
import functools
import io
import json
import os
import tempfile
from typing import IO, Any, Callable, Iterable

import numpy as np

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save_image",
    "refuse_overwrite",
]


@functools.lru_cache(maxsize=1)
def _file_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp alone gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a binary temporary file next to ``path``, fsync it, rename it to ``path``.

    The folder of ``path`` is created if needed. Any exception (also ``KeyboardInterrupt``) removes
    the temporary file and leaves ``path`` as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str, obj: Any) -> None:
    """Atomically write ``obj`` as JSON (compact, UTF-8)."""
    atomic_write_bytes(path, json.dumps(obj).encode("utf-8"))


def atomic_save_image(path: str, array: np.ndarray, **save_kwargs: Any) -> None:
    """Atomically save an ``uint8`` HxW or HxWx3 array; the format follows ``path``'s extension."""
    from PIL import Image

    fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image extension")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **save_kwargs)
    atomic_write_bytes(path, buf.getvalue())


def refuse_overwrite(output: str, inputs: Iterable[str]) -> None:
    """Raise ``ValueError`` if ``output`` is (or would replace) one of ``inputs``."""
    out = os.path.realpath(output)
    for inp in inputs:
        if inp and os.path.realpath(inp) == out:
            raise ValueError(f"refusing to write {output}: it is an input of this command ({inp})")
