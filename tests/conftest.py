"""Shared test setup: no hub access, the shared data beside the repository, the parity fixture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
RELEASE = SHARED / "data" / "animal-clip-release"
PARITY_FIXTURE = SHARED / "fixtures" / "reference_parity_small.pt"


@pytest.fixture
def release_dir() -> Path:
    if not RELEASE.is_dir():
        pytest.skip("../shared/data is not beside the repository")
    return RELEASE


@pytest.fixture(scope="session")
def fixture() -> dict:
    """A forward pass of the authors' own model on a tiny random config: inputs, weights, outputs."""
    if not PARITY_FIXTURE.is_file():
        pytest.fail(f"the parity fixture is missing: {PARITY_FIXTURE}")
    return torch.load(PARITY_FIXTURE, weights_only=True)
