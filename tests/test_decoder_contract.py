"""One decoder contract: a cached run decodes as its cache's clips were decoded (its config and
checkpoints record the cache's decoder, so predict and eval --videos decode the same way), and a
run asking for another decoder than its cache's is refused naming both; and what that checkpoint
predicts on a portrait phone clip, whichever decoder reads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from videos import indexed_frames, write_video

from anim_clip.cache.extract import extract
from anim_clip.config import load_config
from anim_clip.demo import demo_config
from anim_clip.errors import CacheError
from anim_clip.models.checkpoint import load_checkpoint
from anim_clip.predict import Predictor
from anim_clip.runtime.rundir import RunDir
from anim_clip.train.engine import train
from anim_clip.ui import console

OVERRIDES = ["backbone.pretrained=null", "sampling.num_frames=4", "sampling.train_views=2", "train.batch_size=4",
             "train.epochs=1", "train.warmup_epochs=0"]


@pytest.fixture(scope="module")
def data(demo_data) -> Path:
    return demo_data(train_clips=8, test_clips=4, num_frames=16, size=64, seed=7)  # read only here


@pytest.fixture(scope="module")
def pyav_cache(data: Path, tmp_path_factory) -> Path:
    """A cache extracted with sampling.decoder=pyav (the default is decord)."""
    out = tmp_path_factory.mktemp("cache") / "cache.zarr"
    extract(demo_config(data, [*OVERRIDES, "sampling.decoder=pyav"]), out, progress=False)
    return out


@pytest.fixture(scope="module")
def pyav_run(data: Path, pyav_cache: Path, tmp_path_factory) -> tuple[Path, str]:
    """A run trained on the PyAV cache with the default config, and what it said."""
    out = tmp_path_factory.mktemp("pyav-run") / "run"
    with console.capture() as captured:
        train(demo_config(data, OVERRIDES), cache=pyav_cache, out=out, progress=False)
    return out, " ".join(captured.get().split())


def test_a_cached_run_records_its_caches_decoder_and_predicts_with_it(data: Path, pyav_cache: Path,
                                                                      pyav_run: tuple[Path, str]):
    out, said = pyav_run
    assert f"sampling.decoder=pyav: the decoder cache {pyav_cache} was decoded with" in said
    assert load_config(RunDir(out).config).sampling.decoder == "pyav"
    checkpoint = load_checkpoint(RunDir(out).last)
    assert checkpoint.config.sampling.decoder == "pyav"
    assert Predictor(checkpoint, device="cpu").cfg.sampling.decoder == "pyav"
    # resuming with the same config is no config change (refused without --allow-config-change)
    train(demo_config(data, OVERRIDES), cache=pyav_cache, out=out, resume=True, progress=False)
    assert "config_change" not in RunDir(out).metrics.read_text()


def test_a_run_asking_for_another_decoder_than_its_caches_is_refused(data: Path, pyav_cache: Path, tmp_path: Path):
    with pytest.raises(CacheError, match=f"cache {pyav_cache} was decoded with sampling.decoder=pyav, this run asks "
                                         "for torchcodec: drop that setting"):
        train(demo_config(data, [*OVERRIDES, "sampling.decoder=torchcodec"]), cache=pyav_cache, out=tmp_path / "run",
              progress=False)
    assert not (tmp_path / "run").exists()
    train(demo_config(data, [*OVERRIDES, "sampling.decoder=pyav"]), cache=pyav_cache, out=tmp_path / "asked",
          progress=False)  # asking for the cache's own decoder is fine


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_a_portrait_clip_is_scored_as_the_same_clip_stored_upright(pyav_run: tuple[Path, str], tmp_path: Path,
                                                                   decoder: str):
    # predict plans its views on the displayed frame; lossless FFV1 RGB, so the same pixels
    stored = indexed_frames(16, 120, 160)
    sideways = write_video(tmp_path / "sideways.mp4", stored, codec="ffv1", pix_fmt="bgr0", rotation=90)
    upright = write_video(tmp_path / "upright.mp4", np.ascontiguousarray(np.rot90(stored, axes=(1, 2))),
                          codec="ffv1", pix_fmt="bgr0")
    predictor = Predictor(load_checkpoint(RunDir(pyav_run[0]).last), device="cpu", decoder=decoder)
    a, b = predictor.predict(sideways), predictor.predict(upright)
    assert a.error is None and b.error is None
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not np.array_equal(a.scores, predictor.predict(write_video(tmp_path / "stored.mp4", stored, codec="ffv1",
                                                                      pix_fmt="bgr0")).scores)
