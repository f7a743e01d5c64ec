"""Shared test setup: no hub access, and the path of the shared data beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
RELEASE = SHARED / "data" / "animal-clip-release"


@pytest.fixture
def release_dir() -> Path:
    if not RELEASE.is_dir():
        pytest.skip("../shared/data is not beside the repository")
    return RELEASE
