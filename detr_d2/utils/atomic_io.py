"""Atomic file writes: a file is either its old content or its complete new content, never a mix.

Every writer goes through :func:`atomic_write`: the bytes are written to a temporary file in the
target's own folder (same filesystem), flushed and ``fsync``-ed, given the permissions a normal
``open(path, "w")`` would have, then renamed over the target with ``os.replace`` (atomic on POSIX
and Windows). A failure or a kill at any point leaves the target untouched and, except for a hard
kill, no temporary file behind. Temporary names are ``.<name>.<host>-<pid>.<random>.tmp``: the next
:func:`atomic_directory` / :func:`atomic_file` for the same target deletes those whose process was
killed (:func:`remove_stale_temporaries`).
"""

import contextlib
import errno
import functools
import io
import json
import logging
import os
import shutil
import socket
import tempfile
from typing import IO, Any, Callable, Iterable, Iterator, List, Optional

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save_image",
    "atomic_directory",
    "atomic_file",
    "check_new_outputs",
    "refuse_overwrite",
    "refuse_replacing_other_files",
    "remove_stale_temporaries",
    "require_new_or_empty_folder",
    "write_error",
]


@functools.lru_cache(maxsize=1)
def _file_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp alone gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# Errors only a write gives: reported with the path being written (see write_error).
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_error(path: str, error: OSError) -> OSError:
    """``error`` (same ``OSError`` subclass, ``errno`` and cause) given ``path`` as its file: its
    message is the one line ``[Errno 28] No space left on device: '<path>'``."""
    if error.errno is None:
        return type(error)(f"{error}: {path!r}")
    return type(error)(error.errno, error.strerror or str(error), path)


class _WriteRecorder:
    """A binary file that remembers the first ``OSError`` of a ``write``: ``torch.save`` turns such
    a failure into ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``, which
    names neither the file nor the cause."""

    def __init__(self, f: IO[bytes]):
        self._f = f
        self.error: Optional[OSError] = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _owner() -> str:
    """``<host>-<pid>`` of this process, as written into its temporary names."""
    return f"{socket.gethostname().replace('.', '_').replace('-', '_')}-{os.getpid()}"


def _temp_prefix(path: str) -> str:
    """``.<name>.<host>-<pid>.``: the start of a temporary name for ``path`` (see
    :func:`remove_stale_temporaries`)."""
    return f".{os.path.basename(path)}.{_owner()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists
        return True
    return True


def remove_stale_temporaries(path: str) -> List[str]:
    """Delete the temporary siblings of ``path`` (``.<name>.<host>-<pid>.*.tmp``, files or folders)
    whose writer was killed: a process of this host that no longer runs. Returns what was
    deleted (logged as a warning). Temporaries of live processes or other hosts are kept; those
    with no owner in their name (older versions) are kept and named in a warning."""
    parent, base = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    host = _owner().rsplit("-", 1)[0]
    try:
        names = [n for n in os.listdir(parent) if n.startswith(f".{base}.") and n.endswith(".tmp")]
    except OSError:
        return []
    removed, unknown = [], []
    for name in names:
        owner = name[len(base) + 2 : -len(".tmp")].split(".", 1)[0]
        owner_host, _, pid = owner.rpartition("-")
        if not pid.isdigit() or not owner_host:
            unknown.append(name)
            continue
        if owner_host != host or _alive(int(pid)):
            continue
        full = os.path.join(parent, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(full)
        removed.append(full)
    if removed:
        logger.warning(
            f"removed {len(removed)} temporary output(s) of killed processes: {removed[:5]}"
        )
    if unknown:
        logger.warning(
            f"{parent} holds temporary output(s) of an interrupted run with no owner in their "
            f"name: {unknown[:5]}; delete them if no other process is writing {path}"
        )
    return removed


def atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a binary temporary file next to ``path``, fsync it, rename it to
    ``path``.

    The folder of ``path`` is created if needed. Any exception (also ``KeyboardInterrupt``) removes
    the temporary file and leaves ``path`` as it was. A failed write (disk full, quota, any
    ``OSError`` of ``f.write``, also when ``write`` reports it as another exception, as
    ``torch.save`` does) raises that ``OSError`` naming ``path`` (:func:`write_error`).
    """
    with atomic_file(path, overwrite=True, clean_stale=False) as tmp:
        recorder = None
        try:
            with open(tmp, "wb") as f:
                recorder = _WriteRecorder(f)
                write(recorder)  # type: ignore[arg-type]
        except OSError as e:
            if e.filename is not None:  # names its file already
                raise
            raise write_error(path, e) from None
        except Exception as e:
            if recorder is None or recorder.error is None:
                raise
            raise write_error(path, recorder.error) from e


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


@contextlib.contextmanager
def atomic_directory(
    path: str, overwrite: bool = False, inputs: Iterable[str] = ()
) -> Iterator[str]:
    """Fill a folder all or nothing: yields a new temporary sibling of ``path`` (``.<name>.*.tmp``);
    when the block ends normally it is renamed to ``path``, on any exception (also
    ``KeyboardInterrupt``) it is deleted and ``path`` is left as it was.

    An existing ``path`` is refused (``FileExistsError``) unless ``overwrite``; then it is replaced
    only at the end. ``path`` may not be, or contain, one of ``inputs`` (``ValueError``).
    """
    path = os.path.abspath(path)
    for inp in inputs:
        if not inp:
            continue
        real, out = os.path.realpath(inp), os.path.realpath(path)
        if real == out or real.startswith(out.rstrip(os.sep) + os.sep):
            raise ValueError(f"refusing to write {path}: it holds an input of this command ({inp})")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = tempfile.mkdtemp(dir=parent, prefix=_temp_prefix(path), suffix=".tmp")
    try:
        os.chmod(tmp, _dir_mode())
        yield tmp
        if os.path.lexists(path):
            old = tmp + ".old"
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            if os.path.isdir(old) and not os.path.islink(old):
                shutil.rmtree(old)
            else:
                os.unlink(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_directory(parent)


@functools.lru_cache(maxsize=1)
def _dir_mode() -> int:
    """Permissions of a newly created folder under the current umask (mkdtemp alone gives 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


@contextlib.contextmanager
def atomic_file(
    path: str, overwrite: bool = False, inputs: Iterable[str] = (), clean_stale: bool = True
) -> Iterator[str]:
    """Write a file all or nothing: yields the path of a new temporary file next to ``path``
    (``.<name>.*.tmp``, created at once, so an unwritable folder fails before any work); when the
    block ends normally the file is fsync-ed and renamed to ``path``, on any exception it is
    deleted.

    An existing ``path`` is refused (``FileExistsError``) unless ``overwrite``; ``path`` may not be
    one of ``inputs`` (``ValueError``). ``clean_stale``: first delete temporaries of ``path`` left
    by killed processes (:func:`remove_stale_temporaries`; one listing of the folder). Nest an
    :func:`atomic_directory` inside to publish a folder and then the file that describes it (e.g.
    panoptic PNGs, then their JSON).
    """
    path = os.path.abspath(path)
    refuse_overwrite(path, inputs)
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    try:
        if clean_stale:
            remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=_temp_prefix(path), suffix=".tmp")
    except OSError as e:
        raise type(e)(
            f"cannot write {path}: {e.strerror} (creating a file in {directory})"
        ) from None
    os.close(fd)
    try:
        try:
            yield tmp
        except OSError as e:  # a write of the caller's into tmp, unless the error names a file
            if e.errno in _WRITE_ERRNOS and e.filename is None:
                raise write_error(path, e) from None
            raise
        try:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, _file_mode())
            os.replace(tmp, path)
        except OSError as e:
            raise write_error(path, e) from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def check_new_outputs(
    output_file: str,
    output_folder: str,
    overwrite: bool,
    inputs: Iterable[str] = (),
    folder_suffixes: Iterable[str] = (".png",),
) -> bool:
    """Checks before a tool writes ``output_folder`` (with :func:`atomic_directory`) and then
    ``output_file`` (with :func:`atomic_file`), run before any work: ``output_file`` may not be one
    of ``inputs``; existing outputs are refused (``FileExistsError``) unless ``overwrite``, except
    an empty ``output_folder``; with ``overwrite`` the folder may only hold ``folder_suffixes``
    files (:func:`refuse_replacing_other_files`). Returns the ``overwrite`` to give
    ``atomic_directory``
    (also True for an existing empty folder, which has nothing to lose)."""
    refuse_overwrite(output_file, inputs)
    empty_folder = (
        os.path.isdir(output_folder)
        and not os.path.islink(output_folder)
        and not os.listdir(output_folder)
    )
    for path in (output_file, output_folder):
        if os.path.lexists(path) and not overwrite and not (path == output_folder and empty_folder):
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    if overwrite:
        refuse_replacing_other_files(output_folder, folder_suffixes)
    return overwrite or empty_folder


def refuse_replacing_other_files(folder: str, suffixes: Iterable[str]) -> None:
    """Raise ``ValueError`` if the existing ``folder`` holds something whose name does not end with
    one of ``suffixes`` (what the tool writes there): a guard before ``--overwrite`` replaces a
    whole folder that may be the wrong one (e.g. the image folder instead of the PNG folder)."""
    if not os.path.isdir(folder):
        return
    suffixes = tuple(suffixes)
    for name in sorted(os.listdir(folder)):
        if not name.endswith(suffixes) or os.path.isdir(os.path.join(folder, name)):
            raise ValueError(
                f"refusing to replace {folder}: it holds {name!r}, which this tool does not write "
                f"(only *{'/*'.join(suffixes)} files); choose another output folder or "
                "delete it yourself"
            )


def require_new_or_empty_folder(folder: str, overwrite: bool = False) -> None:
    """Create ``folder`` if needed and check a file can be created in it; unless ``overwrite``,
    refuse (``FileExistsError``) a folder that already holds something. Errors name the folder."""
    if os.path.isdir(folder) and os.listdir(folder) and not overwrite:
        raise FileExistsError(f"{folder} is not empty; pass --overwrite to write into it anyway")
    os.makedirs(folder, exist_ok=True)
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=".tmp")
    except OSError as e:
        raise type(e)(f"cannot write in {folder}: {e.strerror}") from None
    os.close(fd)
    os.unlink(probe)
