"""Shared test setup: no hub access, the parity fixture shipped in ``tests/fixtures``, the
optional extra data beside the repository (``extra_data.py``), and demo datasets and caches made
once per session for the test files that read the same ones."""

from __future__ import annotations

import os
from collections.abc import Callable
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


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Callable[..., Path]:
    """``demo_data(**make_demo_data's arguments)``: one demo dataset per set of arguments for the
    whole session, shared by every test file that asks for the same one (generated on first use, so
    a file still runs alone). Read only: a test that changes files copies it first."""
    made: dict[tuple, Path] = {}

    def get(**params) -> Path:
        key = tuple(sorted(params.items()))
        if key not in made:
            from anim_clip.data.demo import make_demo_data

            made[key] = tmp_path_factory.mktemp("demo")
            make_demo_data(made[key], **params)
        return made[key]
    return get


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Callable[[Path, list[str]], Path]:
    """``demo_cache(data, overrides)``: the cache ``extract`` writes for the demo config on ``data``
    with ``overrides``, once per session; the ``train.*`` overrides are dropped, since they do not
    change what extract writes. Read only: training stores its baselines in the cache it reads, so a
    test that trains or writes on it takes a copy (``shutil.copytree``)."""
    made: dict[tuple, Path] = {}

    def get(data: Path, overrides: list[str]) -> Path:
        key = (data, tuple(o for o in overrides if not o.startswith("train.")))
        if key not in made:
            from anim_clip.cache.extract import extract
            from anim_clip.demo import demo_config

            made[key] = tmp_path_factory.mktemp("cache") / "cache.zarr"
            extract(demo_config(data, list(key[1])), made[key], progress=False)
        return made[key]
    return get

