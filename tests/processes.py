"""The command line in a subprocess, also where the system refuses: a file it may not read or a
folder it may not write (permission bits), a full disk (a tiny tmpfs), a per-file size limit."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, check: bool = True, wrap: list[str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """This checkout's ``python -m anim_clip ARGS``, run from ``cwd`` (default: here), after the
    command ``wrap`` (e.g. :func:`unprivileged`) when given; with the suite's OMP_NUM_THREADS, if
    set (``make test``: one thread, so two test workers and their commands do not contend)."""
    threads = {"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"]} if "OMP_NUM_THREADS" in os.environ else {}
    proc = subprocess.run([*(wrap or []), sys.executable, "-m", "anim_clip", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                                     "PYTHONPATH": str(ROOT), **threads})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@cache
def _runs(*command: str) -> bool:
    return subprocess.run(list(command), capture_output=True).returncode == 0


def unprivileged() -> list[str]:
    """A prefix under which permission bits apply: nothing for a normal user; as root (whom chmod
    does not stop), a new user namespace where root has no capabilities over the files."""
    if os.geteuid() != 0:
        return []
    if not _runs("unshare", "--user", "true"):
        pytest.skip("running as root, where chmod does not stop reads or writes, and unshare --user is unavailable")
    return ["unshare", "--user"]


def on_small_disk(folder: Path, kib: int) -> list[str]:
    """A prefix that mounts a ``kib`` KiB tmpfs on ``folder`` for the command only (user and mount
    namespaces: no root needed, nothing left mounted), then prints ``files left:`` and the files
    in it, since they vanish with the mount."""
    if not _runs("unshare", "--user", "--map-root-user", "--mount", "true"):
        pytest.skip("unshare --user --mount is unavailable: cannot mount a small tmpfs to fill")
    script = ('mount -t tmpfs -o size="$0"k tmpfs "$1" || exit 99; dir=$1; shift; "$@"; rc=$?; '
              'echo "files left:" $(cd "$dir" && find . -mindepth 1 | sort); exit $rc')
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(kib), str(folder)]


def size_limited(nbytes: int) -> list[str]:
    """A prefix under which writes past ``nbytes`` in one file fail (EFBIG), as on a full disk."""
    if not _runs("prlimit", "--version"):
        pytest.skip("prlimit (util-linux) is unavailable: cannot limit the size of the files a command writes")
    return ["prlimit", f"--fsize={nbytes}"]


@contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    """Writes past ``nbytes`` in one file fail with EFBIG in this process, as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
