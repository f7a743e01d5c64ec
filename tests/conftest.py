"""Shared test setup: no hub access, the fixtures shipped in ``tests/fixtures``, and the optional
extra data of ``../shared`` beside the repository (tests that need it skip, saying so)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PARITY_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "reference_parity_small.pt"
# Optional extra data: the release's description CSV (third-party prose), not shipped.
SHARED = Path(__file__).resolve().parents[2] / "shared"
RELEASE = SHARED / "data" / "animal-clip-release"


@pytest.fixture
def release_dir() -> Path:
    if not RELEASE.is_dir():
        pytest.skip(f"{RELEASE} is absent (optional extra data: the release's description CSV)")
    return RELEASE


@pytest.fixture(scope="session")
def fixture() -> dict:
    """A forward pass of the authors' own model on a tiny random config: inputs, weights, outputs."""
    return torch.load(PARITY_FIXTURE, weights_only=True)
