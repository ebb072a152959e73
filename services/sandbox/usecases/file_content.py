"""One file of a sandbox's checkout, read on the host for the workbench's file viewer.

The checkout is the agent's: any name in it may be a symlink to the host (`/etc/passwd`, another
organization's checkout), a FIFO that blocks a reader forever, or a device. So the path is walked one
component at a time from the sandbox root with `O_NOFOLLOW` (a directory with `O_DIRECTORY`, relative
to the one before), the last component must be a regular file both before it is opened (lstat) and
once it is (fstat), and it is opened non-blocking. Nothing follows a link, and only a regular file's
bytes are read, at most `MAX_BYTES` of them.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath

from services.sandbox.domain.errors import not_found, precondition, require
from services.sandbox.domain.models import WORK

MAX_BYTES = 1 << 20  # the most of a file returned
SNIFF_BYTES = 8192  # a NUL byte in these makes a file binary (as git and diff tools decide)

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True)
class FileContent:
    path: str
    content: bytes
    size: int
    truncated: bool
    binary: bool


def content_path(path: str) -> tuple[str, ...]:
    """The components of `path`, relative to the checkout and staying inside it (InvalidArgument
    otherwise); `.` and empty components are dropped."""
    require(bool(path), "path", "is required")
    require("\x00" not in path, "path", "must not contain a NUL byte")
    pure = PurePosixPath(path)
    require(not pure.is_absolute(), "path", f"{path!r} must be relative to the checkout, not absolute")
    require(".." not in pure.parts, "path", f"{path!r} must stay inside the checkout (no '..')")
    require(bool(pure.parts), "path", f"{path!r} names the checkout itself, not a file")
    return pure.parts


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _refuse(path: str, where: str, mode: int) -> Exception:
    named = repr(path) if where == path else f"{where!r} (on the way to {path!r})"
    if stat.S_ISLNK(mode):
        return precondition(
            f"{named} is a symbolic link; the file viewer does not follow links", "PATH_IS_SYMLINK"
        )
    return precondition(f"{named} is {_kind(mode)}, not a regular file", "NOT_A_REGULAR_FILE")


def _lstat(name: str, directory: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return None


def read_beneath(root: str, path: str) -> FileContent:
    """The file `path` of the checkout `<root>/work` (blocking: run it in a thread).

    Raises InvalidArgument (absolute, `..`), NotFound (`FILE_NOT_FOUND`), FailedPrecondition
    (`PATH_IS_SYMLINK`: a link anywhere on the path; `NOT_A_REGULAR_FILE`: a directory, FIFO, socket or
    device; `FILE_UNREADABLE`)."""
    parts = content_path(path)
    shown = "/".join(parts)
    missing = not_found("file", f"{shown} (in the checkout)")
    descriptor = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the service's own folder
    try:
        for index, part in enumerate((WORK, *parts[:-1])):
            where = "/".join(parts[:index]) or "the checkout"
            info = _lstat(part, descriptor)
            if info is None:
                raise missing
            if not stat.S_ISDIR(info.st_mode):
                raise _refuse(shown, where, info.st_mode)
            try:
                inner = os.open(part, _DIRECTORY, dir_fd=descriptor)
            except OSError as exc:  # replaced between the lstat and the open: never followed
                raise precondition(
                    f"{where!r} changed while {shown!r} was read: {exc.strerror}", "FILE_UNREADABLE"
                ) from None
            os.close(descriptor)
            descriptor = inner
        name = parts[-1]
        info = _lstat(name, descriptor)
        if info is None:
            raise missing
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(shown, shown, info.st_mode)
        try:
            handle = os.open(name, _FILE, dir_fd=descriptor)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refuse(shown, shown, stat.S_IFLNK) from None
            raise precondition(f"{shown!r} cannot be read: {exc.strerror}", "FILE_UNREADABLE") from None
        try:
            opened = os.fstat(handle)
            if not stat.S_ISREG(opened.st_mode):  # swapped after the lstat: still never read
                raise _refuse(shown, shown, opened.st_mode)
            chunks: list[bytes] = []
            remaining = MAX_BYTES + 1  # one byte more tells a file that grew past the limit
            while remaining > 0:
                chunk = os.read(handle, min(remaining, 1 << 16))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
        finally:
            os.close(handle)
    finally:
        os.close(descriptor)
    data = b"".join(chunks)
    return FileContent(
        path=shown,
        content=data[:MAX_BYTES],
        size=max(opened.st_size, len(data)),
        truncated=len(data) > MAX_BYTES,
        binary=b"\x00" in data[:SNIFF_BYTES],
    )
