"""The separate species predictor (``species.model``): a tiny open_clip model in a ``local-dir:``
folder with its own preprocessing (32 px, SigLIP-like statistics, bicubic) beside the 64-px action
backbone. Its probabilities in the cache equal open_clip run by hand on the same frames; training
and evaluation condition the head on them, not on the annotation or the head's own zero-shot;
``eval`` reports its species accuracy and the head given either species; ``predict``,
``eval --videos`` and ``analyze clip`` run it; what cannot work is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
import zarr
from rich.console import Console
from processes import run_cli
from sklearn.metrics import average_precision_score
from typer.testing import CliRunner
from test_backbones import write_local_dir

from anim_clip.analysis.clips import clip_from_cache, clip_report
from anim_clip.cli.analyze import analyze_app
from anim_clip.analysis.store import build_and_save
from anim_clip.cache.extract import extract
from anim_clip.cache.inspect import cache_info, cache_info_tables, verify_cache
from anim_clip.cache.reader import open_cached_data
from anim_clip.cache.store import FeatureCache
from anim_clip.config import Config
from anim_clip.data.dataset import load_dataset
from anim_clip.data.sampling import union_indices
from anim_clip.data.video import open_video
from anim_clip.data.transforms import render_views
from anim_clip.demo import demo_config
from anim_clip.errors import AnimClipError, CacheError, ConfigError, DamagedCache
from anim_clip.evaluate.cached import cached_scores, evaluate_checkpoint
from anim_clip.evaluate.metrics import any_topk_accuracy
from anim_clip.evaluate.report import report_table
from anim_clip.evaluate.videos import evaluate_checkpoint_on_videos
from anim_clip.frames import plan_views
from anim_clip.models.checkpoint import load_checkpoint
from anim_clip.models.factory import model_from_checkpoint
from anim_clip.models.inputs import HeadInputs
from anim_clip.models.features import FrameFeatures
from anim_clip.predict import Predictor, predict_videos
from anim_clip.runtime.distributed import setup_distributed
from anim_clip.train.engine import train

T = 4
SIZE = 32  # the predictor's input; the action backbone takes 64 px
COMMON = [f"sampling.num_frames={T}", "sampling.train_views=2", "runtime.precision=fp32", "train.batch_size=4",
          "train.accumulation=1", "train.epochs=2", "train.warmup_epochs=1"]
PREDICTED = "model.species_source=predicted"


@pytest.fixture(scope="module")
def data(demo_data) -> Path:
    return demo_data(train_clips=12, test_clips=6, num_frames=16, size=64, seed=2)  # test_backbones's too


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> str:
    """``local-dir:...``: a downloaded open_clip model with its own preprocessing (0.5/0.5, bicubic)."""
    return write_local_dir(tmp_path_factory.mktemp("models") / "predictor", image_size=SIZE)


def config(data: Path, predictor: str, *extra: str) -> Config:
    return demo_config(data, [*COMMON, f"species.model={predictor}", *extra])


@pytest.fixture(scope="module")
def cache(data: Path, predictor: str, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "cache.zarr"
    extract(config(data, predictor), out, progress=False)
    return out


@pytest.fixture(scope="module")
def run(data: Path, predictor: str, cache: Path, tmp_path_factory) -> Path:
    """A head trained given the predictor's cached probabilities."""
    out = tmp_path_factory.mktemp("predicted")
    train(config(data, predictor, PREDICTED), cache=cache, out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def oracle_run(data: Path, predictor: str, cache: Path, tmp_path_factory) -> Path:
    """A head trained given the annotated species, on the same cache (whose config names the predictor)."""
    out = tmp_path_factory.mktemp("oracle")
    train(config(data, predictor), cache=cache, out=out, progress=False)
    return out


def by_hand(cfg: Config, video: Path, split: str, index: int) -> torch.Tensor:
    """``(A,)`` the predictor's probabilities of a clip, averaged over its views: open_clip itself,
    the frames decoded by PyAV (extraction and predict use decord), rendered at the predictor's size
    with its statistics and interpolation."""
    model = open_clip.create_model(cfg.species.model).eval()
    tokenize = open_clip.get_tokenizer(cfg.species.model)
    with open_video(video, "pyav") as file:
        views = plan_views(split, index, file.num_frames, file.height, file.width, cfg.sampling)
        unique, positions = union_indices(views)
        frames = file.get_frames(unique)
    images = render_views(frames, views, positions, SIZE, (0.5,) * 3, (0.5,) * 3, "bicubic")
    names = load_dataset(cfg.data).species
    with torch.no_grad():
        image = F.normalize(model.encode_image(images.flatten(0, 1)).view(len(views), T, -1).mean(1), dim=-1)
        text = F.normalize(model.encode_text(tokenize([f"a photo of {name}." for name in names])), dim=-1)
        return (model.logit_scale.exp() * image @ text.T).softmax(-1).mean(0)


def test_cached_probabilities_equal_open_clip_by_hand(cache: Path, data: Path, predictor: str):
    cfg = config(data, predictor)
    store = FeatureCache(cache)
    recorded = store.config["species"]
    assert (recorded["model"], recorded["template"]) == (predictor, "a photo of {}.")
    assert len(recorded["weights"]) == 64  # the sha256 of the folder's config and weights
    assert (recorded["pixels"]["size"], recorded["pixels"]["mean"], recorded["pixels"]["interpolation"]) == \
        (SIZE, [0.5] * 3, "bicubic")
    for split in ("train", "test"):  # augmented views, test views
        cached = store.split(split)
        assert cached.species_probs.shape == (len(cached), len(load_dataset(cfg.data).species))
        for row in (0, 3):
            expected = by_hand(cfg, data / "videos" / cached.clip_ids[row], split, row)
            torch.testing.assert_close(cached.species_probs[row], expected, atol=1e-5, rtol=1e-4)
    assert verify_cache(cache) == []
    wide = Console(width=250, record=True)
    for table in cache_info_tables(cache_info(cache)):
        wide.print(table)
    shown = wide.export_text()
    assert f"species predictor │ {predictor} ('a photo of {{}}.'): species_probs per clip" in shown


def test_verify_and_training_refuse_damaged_probabilities(cache: Path, data: Path, predictor: str, tmp_path: Path):
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(cache, damaged)
    probabilities = zarr.open_array(damaged / "test" / "species_probs", mode="r+")
    ids = FeatureCache(damaged).split("test").clip_ids
    rows = probabilities[...]
    rows[1], rows[2] = np.nan, rows[2] * 0.5
    probabilities[...] = rows
    [problem] = verify_cache(damaged)
    assert problem == (f"split 'test': 2 done clips have species probabilities that are NaN/inf, missing or do not "
                       f"sum to 1: {ids[1]}, {ids[2]}")
    with pytest.raises(DamagedCache, match=rf"test/species_probs: 1 clips hold NaN/inf species probabilities "
                                           rf"\('{ids[1]}'\)"):
        train(config(data, predictor, PREDICTED), cache=damaged, out=tmp_path / "run", progress=False)


def scores_given(ckpt_path: Path, cache: Path, species: str) -> tuple[np.ndarray, np.ndarray]:
    """Test scores of the checkpoint's head, computed here from the cached views: every view given
    the clip's ``annotated`` species, its cached ``predicted`` probabilities, or (``zero-shot``)
    predicting them itself from the frames; and the targets."""
    ckpt = load_checkpoint(ckpt_path)
    head = model_from_checkpoint(ckpt, "cached").eval()
    split = FeatureCache(cache).split("test")
    head.inputs = HeadInputs("zero-shot" if species == "zero-shot" else "annotated")  # the reference's own inputs
    vectors = split.species_probs if species == "predicted" else split.species.float()
    with torch.no_grad():
        probabilities = torch.stack([head(FrameFeatures(split.cls[:, v].float()), vectors).logits.softmax(-1)
                                     for v in range(split.cls.shape[1])]).mean(0)
    return probabilities.numpy(), split.targets.numpy()


def mean_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    valid = targets.sum(0) > 0
    return float(average_precision_score(targets[:, valid], scores[:, valid], average=None).mean())


def test_training_and_evaluation_condition_on_the_cached_probabilities(run: Path, cache: Path, data: Path,
                                                                      predictor: str):
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt.inputs == HeadInputs("predictor") and ckpt.config.species.model == predictor
    cfg = ckpt.config
    _, splits = open_cached_data(cfg, cache, load_dataset(cfg.data), torch.device("cpu"), ckpt.inputs)
    train_split = splits["train"].split
    rows, views = splits["train"].indices[:4], torch.tensor([0, 1, 0, 1])
    [batch] = splits["train"].batches([(rows, views)])  # what the training epochs are made of
    torch.testing.assert_close(batch.species, train_split.species_probs[rows])
    scores = cached_scores(model_from_checkpoint(ckpt, "cached"), splits["test"], cfg, setup_distributed())
    predicted, targets = scores_given(run / "last.pt", cache, "predicted")
    np.testing.assert_allclose(scores, predicted, atol=1e-5)
    for other in ("annotated", "zero-shot"):
        assert np.abs(scores - scores_given(run / "last.pt", cache, other)[0]).max() > 1e-3, other
    report = json.loads((run / "eval.json").read_text())
    assert report["mAP"] == pytest.approx(mean_ap(predicted, targets))


def test_eval_reports_the_predictors_accuracy_and_both_species_inputs(run: Path, oracle_run: Path, cache: Path,
                                                                     tmp_path: Path):
    split = FeatureCache(cache).split("test")
    probabilities, annotated = split.species_probs.numpy(), split.species.numpy()
    order = np.argsort(-probabilities, axis=1)
    hits = {k: np.mean([annotated[i, order[i, :k]].any() for i in range(len(order))]) for k in (1, 5)}
    for path, uses in ((run, "predicted"), (oracle_run, "annotated")):
        report = evaluate_checkpoint(path, cache, out=tmp_path / uses)
        species = report["species_predictor"]
        assert (species["top1"], species["top5"]) == (pytest.approx(hits[1]), pytest.approx(hits[5]))
        assert (species["clips"], species["clips_without_species"]) == (len(order), 0)
        given = report["species_input"]
        assert given["report_uses"] == uses and given[uses]["mAP"] == report["mAP"]
        for source in ("annotated", "predicted"):
            assert given[source]["mAP"] == pytest.approx(mean_ap(*scores_given(path / "last.pt", cache, source)))
        wide = Console(width=250, record=True)
        wide.print(report_table(report, "test"))
        shown = wide.export_text()
        assert "predicted species top-5 (6 clips)" in shown and "mAP given annotated | predicted species" in shown


def test_species_accuracy_counts_any_annotated_species_and_leaves_out_clips_without():
    probabilities = np.array([[0.1, 0.6, 0.3], [0.2, 0.5, 0.3], [0.15, 0.05, 0.8]])
    annotated = np.array([[0, 1, 1], [0, 0, 0], [1, 0, 0]])  # two species; none; one
    assert any_topk_accuracy(probabilities, annotated, 1) == 0.5
    assert any_topk_accuracy(probabilities, annotated, 2) == 1.0
    assert np.isnan(any_topk_accuracy(probabilities, np.zeros_like(annotated), 1))


def test_predict_and_eval_on_videos_run_the_predictor(run: Path, oracle_run: Path, cache: Path, data: Path):
    cfg = load_checkpoint(run / "last.pt").config
    dataset = load_dataset(cfg.data)
    video = dataset.video_path(dataset.clips("test")[0])
    expected = by_hand(cfg, video, "test", 0).numpy()
    top = np.argsort(-expected)[:3]
    for path in (run, oracle_run):  # also for a head trained on annotated species, given none
        predictor = Predictor(path / "last.pt", device="cpu")
        assert predictor.describe()["species_predictor"]["model"] == cfg.species.model
        prediction = predictor.predict(video)
        assert [name for name, _ in prediction.species] == [dataset.species[i] for i in top]
        np.testing.assert_allclose([p for _, p in prediction.species], expected[top], atol=1e-5)
    assert "species are predicted by the species predictor" in predictor.species_note
    given = predict_videos(run / "last.pt", [video], species=[dataset.species[0]], device="cpu")[0]
    assert given.species == [(dataset.species[0], 1.0)]
    cached = json.loads((run / "eval.json").read_text())
    on_videos = evaluate_checkpoint_on_videos(run, out=run / "eval-videos")
    assert on_videos["mAP"] == pytest.approx(cached["mAP"], abs=1e-3)
    # as on the cache: the predictor's accuracy, and the head given either species side by side
    shown = on_videos["species_predictor"]
    assert (shown["model"], shown["template"], shown["clips"]) == tuple(cached["species_predictor"][k]
                                                                        for k in ("model", "template", "clips"))
    for key in ("top1", "top5"):
        assert shown[key] == pytest.approx(cached["species_predictor"][key])
    assert on_videos["species_input"]["report_uses"] == "predicted"
    for source in ("annotated", "predicted"):
        assert on_videos["species_input"][source]["mAP"] == pytest.approx(cached["species_input"][source]["mAP"],
                                                                           abs=1e-3)


def test_analyze_clip_gives_the_head_the_predictor_probabilities(run: Path, cache: Path, tmp_path: Path):
    """A cached clip comes with its cached probabilities, a video with the predictor run on it; both
    score alike (up to the cache's fp16) and name the most probable species as predicted."""
    cfg = load_checkpoint(run / "last.pt").config
    stored = build_and_save(run / "last.pt", num_gpus=0, device=torch.device("cpu"))
    head = model_from_checkpoint(load_checkpoint(run / "last.pt"), "cached").eval()
    split = FeatureCache(cache).split("test")
    cached = clip_from_cache(cache, split.clip_ids[0], cfg, head.inputs)
    torch.testing.assert_close(cached.species, split.species_probs[0])
    from_cache = clip_report(stored, head, cached, cfg, k=7)
    assert from_cache["species_source"] == "predicted"
    assert from_cache["species"] == [stored.space.species[int(split.species_probs[0].argmax())]]
    out, video = tmp_path / "clip.json", Path(cfg.data.root) / split.clip_ids[0]
    result = CliRunner().invoke(analyze_app, ["clip", str(run), "--video", str(video), "-k", "7", "--device", "cpu",
                                              "--json", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    from_video = json.loads(out.read_text())
    assert (from_video["species"], from_video["species_source"]) == (from_cache["species"], "predicted")
    video_logits = {r["action"]: r["logit"] for r in from_video["by_logit"]}
    for r in from_cache["by_logit"]:
        assert video_logits[r["action"]] == pytest.approx(r["logit"], abs=0.01)


def test_what_cannot_use_the_predictor_is_refused_in_one_line(cache: Path, data: Path, predictor: str,
                                                            tmp_path: Path):
    plain = tmp_path / "plain.zarr"
    extract(demo_config(data, COMMON), plain, progress=False)
    with pytest.raises(CacheError, match=rf"cache {plain} holds no species probabilities, which "
                                         rf"model.species_source=predicted with species.model={predictor} needs: "
                                         r"extract them into a new cache \(`anim-clip extract CONFIG --out NEW "
                                         rf"--set species.model={predictor}`\)"):
        train(config(data, predictor, PREDICTED), cache=plain, out=tmp_path / "run", progress=False)
    with pytest.raises(CacheError, match=r"built with species.template='a photo of \{\}.', this run uses "
                                         r"'a video of \{\}.'"):
        train(config(data, predictor, PREDICTED, "species.template=a video of {}."), cache=cache,
              out=tmp_path / "run", progress=False)
    with pytest.raises(AnimClipError, match=r"e2e mode does not run the species predictor"):
        train(config(data, predictor, PREDICTED, "train.mode=e2e"), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"species.model: unknown open_clip model 'ViT-Nope'"):
        extract(config(data, "ViT-Nope"), tmp_path / "x.zarr", progress=False)
    proc = run_cli("extract", "demo", "--out", str(tmp_path / "y.zarr"), "--set", f"data.annotations={data}",
                   "--set", f"data.root={data / 'videos'}", "--set", f"species.model={predictor}",
                   "--set", "species.template=a photo", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines() == [
        "error: species.template='a photo' must hold one {} where each species name goes and no other braces, "
        "e.g. 'a photo of {}.'"]
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()
