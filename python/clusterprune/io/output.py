"""Everything clusterprune writes goes through here: destination checks, atomic JSON files and
atomic output directories.

Rules (docs/guarantees.md):

* nothing is written inside a source: every destination is checked against the inputs' paths;
* an output directory is built in a temporary sibling ``.NAME.tmp-XXXX`` and appears under its
  final name (one rename) only when complete; a failure or an interrupt removes the temporary
  directory and any parent folders the run created;
* without ``overwrite`` the final rename refuses to replace anything, atomically (``renameat2``
  with ``RENAME_NOREPLACE`` where the kernel has it), so two runs into one new destination cannot
  both succeed;
* a temporary directory is held by a lock for its run's lifetime; the next run in the same folder
  removes the temporary directories whose run is gone (killed with SIGKILL, say).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, OutputExistsError, path_argument
from .jsontext import dumps

TMP_MARK = ".tmp-"
LOCK_SUFFIX = ".lock"
_NAME_ROOM = 96  # characters of the destination's name kept in a temporary name (NAME_MAX is 255)

Sources = Iterable[str | os.PathLike[str]]


def apply_umask(path: str | os.PathLike[str], bits: int) -> None:
    """Gives a file or directory made by mkstemp/mkdtemp (0600/0700) the permissions the umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, bits & ~umask)


def refuse_inside_sources(path: str | os.PathLike[str], sources: Sources, what: str) -> None:
    """Refuses an output path that is a source, lies inside one, or contains one."""
    path_argument(path, what)
    p = Path(path).resolve()
    for src in sources:
        s = Path(src).resolve()
        if p == s or s in p.parents:
            raise OutputExistsError(f"{path}: {what} would be written inside the source {src}")
        if p in s.parents:
            raise OutputExistsError(f"{path}: {what} would contain the source {src}")


def check_destination(dst: str | os.PathLike[str], *, sources: Sources = (), overwrite: bool = False) -> None:
    """A destination directory may be written: not a source, not inside or around one, and new
    unless ``overwrite``."""
    refuse_inside_sources(dst, sources, "the destination")
    dst = Path(dst)
    if os.path.lexists(dst) and not overwrite:
        raise OutputExistsError(f"{dst}: already exists (pass --overwrite to replace it)")
    if os.path.lexists(dst) and not dst.is_dir():
        raise OutputExistsError(f"{dst}: exists and is not a directory")
    if len(dst.name.encode()) > 255:
        raise InvalidArgumentError(f"{dst}: the name is longer than 255 bytes")
    check_parent_writable(dst, "the destination")


def _missing_parents(path: Path) -> list[Path]:
    """The ancestors of ``path`` that do not exist yet, outermost first."""
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing[::-1]


def _make_parents(path: Path) -> list[Path]:
    """Creates the missing parents of ``path``; returns those it created (outermost first)."""
    created = _missing_parents(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_parents(created)
        raise OutputExistsError(f"{path.parent}: cannot create the folder: {exc.strerror}") from None
    return created


def _remove_parents(created: list[Path]) -> None:
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _tmp_prefix(dst: Path) -> str:
    return f".{dst.name[:_NAME_ROOM]}{TMP_MARK}"


def remove_stale_temporaries(parent: Path) -> list[Path]:
    """Removes this tool's temporary directories in ``parent`` whose run has ended (its lock is
    free); returns what was removed. A live run's temporary directory is never touched."""
    removed = []
    try:
        locks = sorted(parent.glob(f".*{TMP_MARK}*{LOCK_SUFFIX}"))
    except OSError:
        return removed
    for lock in locks:
        tmp = lock.with_name(lock.name[: -len(LOCK_SUFFIX)])
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live run holds it
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            lock.unlink(missing_ok=True)
            removed.append(tmp)
        finally:
            os.close(fd)
    return removed


def _rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails with EEXIST instead of replacing ``dst`` (atomic where the kernel has
    renameat2; elsewhere a check then a rename, which a non-empty ``dst`` still makes fail)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, rename_noreplace = -100, 1
        if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(code, os.strerror(code), str(dst))
    if os.path.lexists(dst):
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def _publish(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Moves the finished temporary directory to ``dst``; replaces an old ``dst`` only when
    ``overwrite``."""
    apply_umask(tmp, 0o777)
    if overwrite and os.path.lexists(dst):
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name[:_NAME_ROOM]}.old-", dir=dst.parent))
        os.rename(dst, old / "x")
        os.rename(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        _rename_noreplace(tmp, dst)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise OutputExistsError(
                f"{dst}: appeared while this run was writing (another run?); pass --overwrite to replace it"
            ) from None
        raise


def _locked_temporary(dst: Path) -> tuple[int, Path]:
    """A new temporary directory beside ``dst`` and the held lock of its lock file. The lock file
    is created and locked *before* the directory exists, so a concurrent stale-temporary sweep
    can never take a live run's directory for a dead one's."""
    for _ in range(100):
        try:
            fd, lock = tempfile.mkstemp(prefix=_tmp_prefix(dst), suffix=LOCK_SUFFIX, dir=dst.parent)
        except OSError as exc:
            raise OutputExistsError(f"{dst.parent}: cannot write here: {exc.strerror}") from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        tmp = Path(lock[: -len(LOCK_SUFFIX)])
        try:
            tmp.mkdir(mode=0o700)
            return fd, tmp
        except FileExistsError:  # a leftover of that very name: draw another
            os.close(fd)
            Path(lock).unlink(missing_ok=True)
    raise OutputExistsError(f"{dst.parent}: cannot create a temporary directory")


@contextlib.contextmanager
def atomic_directory(dst: str | os.PathLike[str], *, overwrite: bool = False, sources: Sources = ()) -> Iterator[Path]:
    """Yields an empty temporary directory beside ``dst``; when the block ends without an error
    it becomes ``dst``, else it (and any parent folder created for it) is removed."""
    dst = Path(dst)
    sources = list(sources)
    check_destination(dst, sources=sources, overwrite=overwrite)
    created = _make_parents(dst)
    lock_fd = -1
    tmp: Path | None = None
    published = False
    try:
        remove_stale_temporaries(dst.parent)
        lock_fd, tmp = _locked_temporary(dst)
        yield tmp
        _publish(tmp, dst, overwrite)
        published = True
    finally:
        if tmp is not None:
            if not published:
                shutil.rmtree(tmp, ignore_errors=True)
            Path(tmp.with_name(tmp.name + LOCK_SUFFIX)).unlink(missing_ok=True)
        if lock_fd >= 0:
            os.close(lock_fd)
        if not published:  # after the lock file went: the folders it sat in are empty now
            _remove_parents(created)


def check_file_destination(
    path: str | os.PathLike[str], *, sources: Sources = (), what: str = "the JSON file", overwrite: bool = True
) -> None:
    """An output file may be written: not inside a source, not a directory, new unless
    ``overwrite``, and its folder exists or can be created (checked before the work whose result
    it records)."""
    refuse_inside_sources(path, sources, what)
    if Path(path).is_dir():
        raise OutputExistsError(f"{path}: {what} names a directory (expected a file name)")
    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(f"{path}: already exists (pass --overwrite to replace it)")
    check_parent_writable(path, what)


def check_parent_writable(path: str | os.PathLike[str], what: str) -> None:
    """The nearest existing folder above ``path`` is a folder, and a file can be created and
    removed there: the one sure test that ``path`` can be written (permissions, a read-only file
    system, ACLs), made before the work."""
    folder = next(parent for parent in Path(path).absolute().parents if parent.exists())
    if not folder.is_dir():
        raise OutputExistsError(f"{path}: {what} cannot be created: {folder} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".clusterprune-probe-", dir=folder)
    except OSError as exc:
        raise OutputExistsError(f"{path}: {what} cannot be written in {folder}: {exc.strerror}") from None
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str], *, sources: Sources = (), what: str = "the output file"
) -> Iterator[Path]:
    """Yields a temporary sibling of ``path`` to write; on success it replaces ``path`` in one
    rename, on failure it and any parent folders this call created are removed."""
    path = Path(path)
    check_file_destination(path, sources=sources, what=what)
    created = _make_parents(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:_NAME_ROOM]}.", dir=path.parent)
    except OSError as exc:
        _remove_parents(created)
        raise OutputExistsError(f"{path}: cannot write: {exc.strerror}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        apply_umask(tmp, 0o666)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        _remove_parents(created)
        raise


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, sources: Sources = ()) -> None:
    """Writes ``data`` as JSON to ``path`` through a temporary file and one rename."""
    text = dumps(data, str(path), indent=2) + "\n"  # refused before anything is written
    with atomic_file(path, sources=sources, what="the JSON file") as tmp:
        Path(tmp).write_text(text)
