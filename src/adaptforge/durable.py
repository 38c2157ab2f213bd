"""Durable file writes: content checksums and fsync of files and directory entries.

The library, the generator cache and training checkpoints all write to a temporary folder, fsync it,
and rename it into place; these are the pieces they share, so a crash leaves the old or the new
version, never half of one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from adaptforge.errors import AdaptforgeError


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a directory entry (a created or renamed child) durable; a no-op where unsupported."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file directly in ``folder``, then the folder's own entries."""
    for child in folder.iterdir():
        if child.is_file():
            with open(child, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(folder)


class UnsafeRemovalError(RuntimeError):
    """A removal that would reach outside the folder that owns it: a bug or a hostile name, never done."""


def remove_inside(path: Path, owner: Path) -> bool:
    """``rmtree(path)`` only if ``path`` resolves strictly inside ``owner``; returns whether anything was removed.

    Every removal in adaptforge goes through here, so a name such as ``..`` or a symlink can never turn a
    cleanup into the deletion of the library (or anything above it). Symlinks at ``path`` are unlinked, not
    followed.
    """
    owner = Path(owner).resolve()
    path = Path(path)
    parent = path.parent.resolve()
    target = parent / path.name
    if path.name in ("", ".", "..") or (parent != owner and owner not in parent.parents):
        raise UnsafeRemovalError(f"refusing to remove {path}: it is not strictly inside {owner}")
    if target.is_symlink():
        target.unlink()
        return True
    if not target.exists():
        return False
    if target.is_dir():
        shutil.rmtree(target, ignore_errors=True)
    else:
        target.unlink()
    return True


class LockedError(AdaptforgeError):
    """Another process holds the lock on a resource this command needs."""


@contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking ``flock`` on ``path`` (created if needed) for the ``with`` body.

    A second holder fails at once with :class:`LockedError` naming ``what``. The lock file is removed on
    release; a holder re-checks after locking that the file it locked is still the one at ``path``, so a
    removal racing with a new locker can never give two processes the lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(f"{what} is in use by another process (lock {path}); wait for it to finish") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was removed by the previous holder between our open and our lock: retry
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def is_locked(path: Path) -> bool:
    """Whether a live process holds the :func:`exclusive_lock` on ``path`` (probed without waiting; a lock file
    left by a killed process is not held)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's shared lock
    return False


TMP_PREFIX = ".tmp-"  # the one temp-name prefix: verify and gc recognise what a crash left behind


def current_umask() -> int:
    """The process umask, read without changing it (Linux: /proc; elsewhere a brief set-and-restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_files(folder: Path) -> None:
    """Give every file in ``folder`` the mode a plain ``open()`` would (0644 under the usual umask):
    safetensors and some savers create files 0600, which other users of a shared library cannot read."""
    mode = 0o666 & ~current_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def stage_folder(dest: Path) -> Path:
    """A new, empty folder beside ``dest`` to write into before :func:`publish_folder` (``.tmp-<name>-<hex>``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{TMP_PREFIX}{dest.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def publish_folder(tmp: Path, dest: Path, replace: bool = False) -> None:
    """Make the staged ``tmp`` appear as ``dest`` in one rename, after its files are on disk.

    An empty ``dest`` folder is replaced; a non-empty one only with ``replace`` (it is moved aside, put back
    if the rename fails, and deleted once ``dest`` is in place). On failure ``tmp`` is removed.
    """
    old = dest.parent / f"{TMP_PREFIX}{dest.name}-old-{uuid.uuid4().hex[:8]}"
    try:
        share_files(tmp)
        fsync_tree(tmp)
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        elif dest.exists():
            if not replace:
                raise FileExistsError(f"{dest} exists and is not an empty folder")
            os.rename(dest, old)
        os.rename(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        if old.exists() and not dest.exists():
            os.rename(old, dest)
        remove_inside(tmp, dest.parent)
        raise
    remove_inside(old, dest.parent)


@contextmanager
def staged_folder(dest: Path, replace: bool = False) -> Iterator[Path]:
    """Write a folder atomically: the body fills the yielded temp folder, a clean exit publishes it as
    ``dest`` (:func:`publish_folder`), an error removes it. Readers see the old folder or the whole new one."""
    tmp = stage_folder(dest)
    try:
        yield tmp
    except BaseException:
        remove_inside(tmp, dest.parent)
        raise
    publish_folder(tmp, dest, replace)


@contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """Write ``path`` atomically through the temp path this yields (beside it): on exit the temp file is fsynced,
    given the umask's mode, renamed over ``path`` and the folder fsynced. Readers (and a crash) see the old file
    or the whole new one; on failure the temp file is removed."""
    path = Path(path)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_file(path: Path, payload: bytes) -> None:
    """Replace ``path`` with ``payload`` atomically (:func:`staged_file`)."""
    with staged_file(path) as tmp, open(tmp, "xb") as fh:
        fh.write(payload)


def check_out_file(out: Path, reads: tuple[Path, ...] = (), flag: str = "--out") -> Path:
    """``out`` resolved, checked before any work as a file a command may replace: not a folder, and not one of
    the inputs it ``reads`` (nor inside an input folder), which the output would silently overwrite."""
    out = Path(out).expanduser().resolve()
    if out.is_dir():
        raise AdaptforgeError(f"{flag} {out} is a folder; give a file name such as {out / 'out.jsonl'}")
    for given in reads:
        source = Path(given).expanduser().resolve()
        if out == source or source in out.parents:
            raise AdaptforgeError(f"{flag} {out} is the input {given} (or inside it); write the output elsewhere")
    return out
