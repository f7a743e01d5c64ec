"""What ``predict`` is given: video files, folders of them, list files, and the model as a run
directory or a checkpoint file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anim_clip.errors import AnimClipError

# what camera traps, drones and phones write, and the containers the decoders read
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mts", ".m2ts", ".ts", ".mpg",
                              ".mpeg", ".wmv", ".flv", ".3gp", ".h264", ".h265", ".hevc"})


@dataclass
class Inputs:
    """The videos to score, in order, and the paths given that are not videos (path, why)."""

    videos: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, path: Path) -> None:
        """A file is a video by its extension; one with a video extension that is missing is kept,
        so it becomes a failed row naming it rather than vanishing."""
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            self.videos.append(path)
        else:
            self.skipped.append((path, "no such file or folder" if not path.exists() else
                                 f"not a video (extension {path.suffix or 'none'})"))

    def add_folder(self, folder: Path) -> None:
        """Every file under ``folder``, sorted; hidden ones (macOS ``._`` copies) are not videos."""
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            if file.name.startswith("."):
                self.skipped.append((file, "hidden file"))
            else:
                self.add(file)


def read_list(path: Path) -> list[Path]:
    """One path a line; blank lines and lines starting with # are skipped; relative paths are
    relative to the list's folder, so a list travels with its videos."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise AnimClipError(f"--list {path}: cannot read it ({e.strerror or e})") from None
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [p if p.is_absolute() else path.parent / p for p in map(Path, entries)]


def collect_videos(paths: Sequence[Path], list_file: Path | None = None) -> Inputs:
    """Files as given; folders searched recursively, each folder's files in sorted order; then the
    paths of ``list_file``. Paths that are not videos are set aside with the reason; a video named
    twice is scored once; no video at all is an error."""
    found = Inputs()
    for path in [*map(Path, paths), *(read_list(list_file) if list_file else [])]:
        if path.is_dir():
            found.add_folder(path)
        else:
            found.add(path)
    found.videos = list(dict.fromkeys(found.videos))
    if not found.videos:
        given = ", ".join(str(p) for p in paths) or str(list_file)
        raise AnimClipError(f"no video files in {given} (looked for {', '.join(sorted(VIDEO_EXTENSIONS))})")
    return found


def shard_of(videos: Sequence[Path], shard: int, shards: int) -> list[tuple[int, Path]]:
    """``(index in videos, video)`` of shard ``shard`` of ``shards``: every n-th video, so long and
    short videos spread evenly when a folder sorts them by camera or date."""
    return [(i, v) for i, v in enumerate(videos) if i % shards == shard]
