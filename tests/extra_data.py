"""The optional extra data beside the repository (``../shared``): the release's description CSV
(third-party prose) and a GPL-licensed real clip, neither of which the repository ships.

Tests that need it are marked ``extra_data`` and skip, saying why, when it is absent; CI runs them
a second time beside the data with ``ANIM_CLIP_EXTRA_DATA=required``, where absence is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
RELEASE = SHARED / "data" / "animal-clip-release"
VIDEOS = SHARED / "data" / "real-videos"


def require(path: Path, what: str) -> Path:
    """``path`` when it exists; otherwise skip the test (or fail it, where CI requires the data)."""
    if path.exists():
        return path
    message = f"{path} is absent (optional extra data: {what})"
    if os.environ.get("ANIM_CLIP_EXTRA_DATA") == "required":
        pytest.fail(message)
    pytest.skip(message)
