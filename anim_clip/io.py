"""Atomic file writes: a reader never sees half a file, and Ctrl-C never leaves one behind.

A write that fails (read-only folder, full disk, quota) raises an ``OSError`` naming the file the
caller asked for, never a temporary; the command line prints it as one line.

A temporary is named ``.NAME.HOST-PID.RANDOM.tmp``. A writer killed outright (SIGKILL, power loss:
no ``finally`` runs) leaves its temporary behind, gigabytes for an end-to-end checkpoint; the next
atomic write of the same file removes those whose process is gone. It is done there, not when a
command starts, because only that write knows which temporaries are its file's, whatever the
command; a temporary of a live process (the PID exists) or of another host is never touched.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp: Path | None = None
    umask = os.umask(0)
    os.umask(umask)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_temporaries(path)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{socket.gethostname()}-{os.getpid()}.", suffix=".tmp",
                                        dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        # after the write: mkstemp makes 0600, and some writers (safetensors) recreate the file
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as e:
        raise _naming(e, path) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_durably(path: str | Path, text: str) -> None:
    """Append ``text`` and fsync, so it survives a crash right after; a failed append (disk full)
    is cut back off, leaving the file as it was."""
    path = Path(path)
    data = memoryview(text.encode("utf-8"))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
    except OSError as e:
        raise _naming(e, path) from None


def _remove_dead_temporaries(path: Path) -> None:
    """Remove the temporaries of ``path`` whose writer, a process of this host, is gone."""
    own = re.compile(rf"\.{re.escape(path.name)}\.{re.escape(socket.gethostname())}-(\d+)\.[^.]+\.tmp")
    for tmp in path.parent.iterdir():
        found = own.fullmatch(tmp.name)
        if found and not _running(int(found[1])):
            tmp.unlink(missing_ok=True)  # missing: another writer removed it first


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True


def _naming(error: OSError, path: Path) -> OSError:
    """The same error about ``path`` (a write's own errors name no file, or a temporary one)."""
    return OSError(error.errno, error.strerror, str(path)) if error.errno is not None else error
