"""Errors caused by user input. The command line prints them as one line, never a traceback."""

from __future__ import annotations

from pathlib import Path


class AnimClipError(Exception):
    """Base class: something the user can fix (a file, an option, a config value)."""


class ConfigError(AnimClipError):
    """A config file or an override is invalid."""


class DatasetFormatError(AnimClipError):
    """A dataset file (labels, species, relation, split, CSV) is malformed."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = Path(path)
        self.line = line


class VideoDecodeError(AnimClipError):
    """A video is missing, empty, truncated or cannot be decoded."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: cannot decode video: {reason}")
        self.path = Path(path)
        self.reason = reason


class CacheError(AnimClipError):
    """A feature cache is missing, built for another config, or inconsistent."""


class DamagedCache(CacheError):
    """Part of a cache cannot be read: a truncated chunk, an invalid ``zarr.json``, a missing array."""

    def __init__(self, cache: str | Path, problem: str):
        super().__init__(f"{problem}: the cache is damaged; run `anim-clip cache verify {cache}`")
        self.problem = problem


class DecoderUnavailable(AnimClipError):
    """The configured video decoder cannot run on this machine (a run-wide problem, not a bad clip)."""

    def __init__(self, backend: str, reason: str):
        super().__init__(f"video decoder {backend!r} is unavailable: {reason} "
                         "(sampling.decoder in a config or --set; predict --decoder)")
        self.backend = backend
        self.reason = reason
