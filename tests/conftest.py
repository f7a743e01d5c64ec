"""Shared test setup: no hub access, the parity fixture shipped in ``tests/fixtures``, and the
optional extra data beside the repository (``extra_data.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from extra_data import RELEASE, require

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PARITY_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "reference_parity_small.pt"


@pytest.fixture
def release_dir() -> Path:
    return require(RELEASE, "the release's description CSV")


@pytest.fixture(scope="session")
def fixture() -> dict:
    """A forward pass of the authors' own model on a tiny random config: inputs, weights, outputs."""
    return torch.load(PARITY_FIXTURE, weights_only=True)
