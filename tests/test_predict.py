"""``anim-clip predict``: a checkpoint on real video files, checked against the same computation done
by hand with the other decoder, plus species options, sliding windows and bad input."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console

from anim_clip.config import Config, load_config
from anim_clip.data.dataset import load_dataset
from anim_clip.data.demo import make_demo_data
from anim_clip.data.sampling import eval_views, union_indices
from anim_clip.data.transforms import normalization_stats, render_views
from anim_clip.data.video import decoder_unavailable, open_video
from anim_clip.errors import AnimClipError, DecoderUnavailable
from anim_clip.models import build_head, end_to_end, load_checkpoint, model_from_checkpoint, save_checkpoint
from anim_clip.models.backbone import FrozenImageTower, create_clip, encode_texts
from anim_clip.models.features import FrameFeatures
from anim_clip.predict import (Predictor, VideoPrediction, prediction_record, prediction_table, predict_videos, run_predict,
                               window_bounds)

from videos import indexed_frames, real_clip, write_garbage, write_video

BUNNY, FISH = "bigbuckbunny.mp4", "fish_tank_idtrackerai_test_A.avi"
T = 4
TOL = {"atol": 1e-5, "rtol": 0}



@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, train_clips=4, test_clips=4, num_frames=16, size=64)
    return root


@pytest.fixture(scope="module")
def cfg(demo: Path, tmp_path_factory) -> Config:
    """The tiny demo config whose backbone weights are a local file that differs from the seeded
    random init, so a prediction that ignored ``backbone.pretrained`` would not match."""
    cfg = load_config("demo", ["backbone.pretrained=null", f"sampling.num_frames={T}", "runtime.precision=fp32",
                               f"data.annotations={demo}", f"data.root={demo / 'videos'}"])
    clip, _ = create_clip(cfg.backbone)
    generator = torch.Generator().manual_seed(1)
    weights = {k: v + 0.02 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
               for k, v in clip.state_dict().items()}
    cfg.backbone.pretrained = str(tmp_path_factory.mktemp("weights") / "tiny.pt")
    torch.save(weights, cfg.backbone.pretrained)
    return cfg


def vocabulary(cfg: Config) -> tuple[dict[str, list[str]], dict[str, torch.Tensor]]:
    dataset = load_dataset(cfg.data)
    clip, _ = create_clip(cfg.backbone)
    tensors = {
        "action_text": encode_texts(clip, dataset.actions, cfg.backbone.model),
        "species_text": encode_texts(clip, dataset.species, cfg.backbone.model),
        "adjacency": torch.from_numpy(dataset.train_graph().adjacency()),
    }
    return {"actions": dataset.actions, "species": dataset.species}, tensors


@pytest.fixture(scope="module")
def head_ckpt(cfg: Config, tmp_path_factory) -> Path:
    names, tensors = vocabulary(cfg)
    torch.manual_seed(0)
    head = build_head(cfg, embed_dim=tensors["action_text"].shape[1], **tensors)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "head.pt", head, cfg, vocab=names)


@pytest.fixture(scope="module")
def videos(demo: Path) -> list[Path]:
    return sorted((demo / "videos").rglob("*.mp4"))[:2]


def by_hand(ckpt_path: Path, video_path: Path, species: list[str] | None, clips: int,
            crops: int) -> tuple[np.ndarray, np.ndarray]:
    """Action and species probabilities averaged over the test views, computed without predict.py:
    PyAV (predict uses decord), render, tower, head; species either the given multi-hot or
    zero-shot from the frame-mean CLS."""
    ckpt = load_checkpoint(ckpt_path)
    cfg = ckpt.config
    with open_video(video_path, "pyav") as video:
        views = eval_views(video.num_frames, video.height, video.width, T, clips, crops,
                           cfg.sampling.image_size, cfg.sampling.resize)
        unique, positions = union_indices(views)
        frames = video.get_frames(unique)
    images = render_views(frames, views, positions, cfg.sampling.image_size, *normalization_stats(cfg.sampling.normalization))
    if ckpt.kind == "head":
        head = model_from_checkpoint(ckpt, "cached").eval()
        cls = FrozenImageTower(create_clip(cfg.backbone)[0])(images.flatten(0, 1))[0].view(len(views), T, -1)
        features = FrameFeatures(cls)
    else:
        model = model_from_checkpoint(ckpt).eval()
        head = model.head
        with torch.no_grad():
            features = model.encode_frames(images)
    vocab = head.vocab
    if species is None:
        video_embedding = F.normalize(features.cls.mean(1), dim=-1)
        s = (head.cfg.logit_scale * video_embedding @ F.normalize(vocab.species_text, dim=-1).T).softmax(-1)
    else:
        s = torch.tensor([[float(name in species) for name in ckpt.vocab["species"]]]).expand(len(views), -1)
    assert head.inputs.species == "annotated"  # trained on annotated species: s is given, whichever way it was made
    with torch.no_grad():
        return head(features, s).logits.softmax(-1).mean(0).numpy(), s.mean(0).numpy()


@pytest.mark.parametrize("species", [["Duck", "Frog"], None], ids=["oracle", "predicted"])
def test_scores_equal_the_head_run_by_hand(head_ckpt: Path, videos: list[Path], species):
    paths = [videos[0], real_clip(BUNNY)]
    predictions = predict_videos(head_ckpt, paths, species=species, predict_species=species is None, clips=2, crops=3,
                                 device="cpu")
    for path, prediction in zip(paths, predictions):
        assert prediction.error is None and prediction.video == path
        assert prediction.scores.shape == (7,) and (prediction.scores >= 0).all()
        assert prediction.scores.sum() == pytest.approx(1.0, abs=1e-5)
        scores, species_probabilities = by_hand(head_ckpt, path, species, 2, 3)
        np.testing.assert_allclose(prediction.scores, scores, **TOL)
        names = load_checkpoint(head_ckpt).vocab["species"]
        shown = 3 if species is None else len(species)  # predicted: the three most probable
        expected = [(names[i], species_probabilities[i]) for i in np.argsort(-species_probabilities)[:shown]]
        assert [n for n, _ in prediction.species] == [n for n, _ in expected]
        np.testing.assert_allclose([p for _, p in prediction.species], [p for _, p in expected], **TOL)
    assert predictions[1].num_frames == 132 and predictions[1].duration_s == pytest.approx(132 / 25)


def test_species_options(head_ckpt: Path, videos: list[Path]):
    given = predict_videos(head_ckpt, videos[:1], species=["fox "], device="cpu")[0]  # case and spaces forgiven
    predicted = predict_videos(head_ckpt, videos[:1], predict_species=True, device="cpu")[0]
    assert given.species == [("Fox", 1.0)]
    assert np.abs(given.scores - predicted.scores).max() > 1e-3
    default = Predictor(head_ckpt, device="cpu")  # trained with annotated species, none given: predicted, and said
    assert default.inputs.species == "zero-shot" and "--species" in default.species_note
    np.testing.assert_allclose(default.predict(videos[0]).scores, predicted.scores, rtol=0, atol=1e-6)
    assert Predictor(head_ckpt, predict_species=True, device="cpu").species_note is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_checkpoint_decoding_on_the_gpu_predicts_here_with_decord(head_ckpt: Path, videos: list[Path], capsys):
    ckpt = load_checkpoint(head_ckpt)
    config = dataclasses.replace(ckpt.config, sampling=dataclasses.replace(ckpt.config.sampling, decoder="torchcodec-cuda"))
    gpu_trained = dataclasses.replace(ckpt, config=config)
    predictor = Predictor(gpu_trained, species=["Fox"], device="cpu")
    assert predictor.cfg.sampling.decoder == "decord"
    assert "decodes with torchcodec-cuda, unavailable here" in capsys.readouterr().out
    reference = Predictor(head_ckpt, species=["Fox"], device="cpu").predict(videos[0]).scores
    np.testing.assert_array_equal(predictor.predict(videos[0]).scores, reference)
    with pytest.raises(DecoderUnavailable, match="torch sees none"):
        Predictor(head_ckpt, device="cpu", decoder="torchcodec-cuda")
    if decoder_unavailable("torchcodec") is None:  # the same pixels, so the same scores
        torchcodec = Predictor(head_ckpt, species=["Fox"], device="cpu", decoder="torchcodec")
        np.testing.assert_array_equal(torchcodec.predict(videos[0]).scores, reference)


def test_a_video_decord_cannot_read_is_predicted_from_pyav_pixels_and_said_once(head_ckpt: Path, tmp_path: Path,
                                                                               capsys):
    raw = write_video(tmp_path / "raw.h264", indexed_frames(16, 64, 64))  # no timestamps: decord cannot open it
    predictor = Predictor(head_ckpt, species=["Duck"], device="cpu")
    assert predictor.cfg.sampling.decoder == "decord"
    first, again = predictor.predict(raw), predictor.predict(raw)
    assert first.error is None
    np.testing.assert_allclose(first.scores, by_hand(head_ckpt, raw, ["Duck"], 1, 1)[0], **TOL)
    np.testing.assert_array_equal(again.scores, first.scores)
    out = " ".join(capsys.readouterr().out.split())
    assert out.count("decoder fallback:") == 1 and f"{raw}: cannot decode video: decord: " in out


def test_species_line_shows_every_predicted_probability_even_a_certain_one():
    """A predicted species at probability 1.0 kept its name only, like a given one; given ones say so."""
    prediction = VideoPrediction(Path("fox.mp4"), ["Walking"], np.ones(1), [("Fox", 1.0), ("Duck", 0.0)], num_frames=32, fps=16)
    given = dataclasses.replace(prediction, species=[("Fox", 1.0), ("Duck", 1.0)])
    lines = {}
    for source, shown in (("predicted", prediction), ("oracle", given)):
        out = io.StringIO()
        shown = dataclasses.replace(shown, species_source=source)
        Console(file=out, width=200, color_system=None).print(prediction_table(prediction_record(shown, 1)))
        lines[source] = out.getvalue().splitlines()[0]
    assert lines["predicted"] == "fox.mp4 (2.0 s), species: Fox 1.00, Duck 0.00"
    assert lines["oracle"] == "fox.mp4 (2.0 s), species: Fox, Duck (given)"


def test_a_demo_world_checkpoint_says_its_tower_saw_only_the_demo(cfg: Config, videos: list[Path], tmp_path: Path,
                                                                   capsys):
    demo_cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, pretrained="demo-world"))
    names, tensors = vocabulary(demo_cfg)
    path = save_checkpoint(tmp_path / "demo-world.pt", build_head(demo_cfg, embed_dim=tensors["action_text"].shape[1], **tensors), demo_cfg, vocab=names)
    assert run_predict(path, videos[:1], out=tmp_path / "out", species=["Fox"], device="cpu") == 0
    notes = [line for line in " ".join(capsys.readouterr().out.split()).split("\n") if "demo-world" in line]
    assert len(notes) == 1 and "image tower is the tiny CLIP shipped for the demo" in notes[0]
    assert "trained only on drawn animals" in notes[0] and "species and" not in notes[0]  # not the run's vocabulary


def test_unknown_species_and_bad_options_are_one_clear_line(head_ckpt: Path):
    with pytest.raises(AnimClipError, match=r"unknown species 'Foxx' \(--species\); close matches: Fox"):
        Predictor(head_ckpt, species=["Foxx"])
    with pytest.raises(AnimClipError, match="known species: Clownfish, Common Crane"):
        Predictor(head_ckpt, species=["Elephant"])
    with pytest.raises(AnimClipError, match="not both"):
        Predictor(head_ckpt, species=["Fox"], predict_species=True)
    with pytest.raises(AnimClipError, match=r"crops \(spatial test views\) must be one of 1, 3"):
        Predictor(head_ckpt, crops=2)
    with pytest.raises(AnimClipError, match="decoder must be one of decord, pyav, torchcodec"):
        Predictor(head_ckpt, decoder="opencv")


def test_a_checkpoint_that_is_not_ours_gets_the_loaders_message(tmp_path: Path, videos: list[Path]):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(AnimClipError, match="not an anim-clip checkpoint"):
        predict_videos(path, videos)


def test_window_bounds():
    assert window_bounds(50, 25.0, 4.0, 2.0) == [(0.0, 2.0)]  # shorter than a window: one window
    assert window_bounds(200, 25.0, 4.0, 2.0) == [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0)]  # 8 s: fits exactly
    assert window_bounds(210, 25.0, 4.0, 2.0)[-1] == (4.4, 8.4)  # the tail gets a window ending with the video


@pytest.mark.extra_data
def test_window_timeline_on_a_long_real_clip(head_ckpt: Path, tmp_path: Path):
    fish = real_clip(FISH)
    failed = run_predict(head_ckpt, [fish], out=tmp_path, window=4.0, predict_species=True, device="cpu")
    assert failed == 0
    record = json.loads((tmp_path / "predictions.json").read_text())
    fps = record["videos"][0]["fps"]
    duration = 501 / fps
    assert record["window"] == {"length_s": 4.0, "stride_s": 2.0} and duration == pytest.approx(17.85, abs=0.01)
    expected = [(2.0 * k, 2.0 * k + 4) for k in range(7)] + [(duration - 4, duration)]  # 0-4 ... 12-16, then the tail
    windows = record["videos"][0]["windows"]
    assert [t for w in windows for t in (w["start_s"], w["end_s"])] == pytest.approx(np.ravel(expected), abs=1e-5)

    with open(tmp_path / "timeline.csv", newline="") as f:
        rows = list(csv.reader(f))
    actions = load_checkpoint(head_ckpt).vocab["actions"]
    assert rows[0] == ["video", "start_s", "end_s", *actions] and len(rows) == 1 + len(expected)
    assert {r[0] for r in rows[1:]} == {str(fish)}
    assert [float(t) for r in rows[1:] for t in r[1:3]] == pytest.approx(np.ravel(expected), abs=1e-3)
    scores = np.array([[float(v) for v in r[3:]] for r in rows[1:]])
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-4)
    video_scores = np.array([record["videos"][0]["scores"][a] for a in actions])
    np.testing.assert_allclose(video_scores, scores.mean(0), atol=1e-4)  # a video = the mean of its windows

    with Image.open(tmp_path / "timeline_fish_tank_idtrackerai_test_A.png") as image:
        image.verify()
        assert image.format == "PNG" and image.size == (1000, 400)


def test_missing_and_broken_videos_are_reported_and_the_others_predicted(head_ckpt: Path, videos: list[Path],
                                                                         tmp_path: Path, capsys):
    missing, broken = tmp_path / "missing.mp4", write_garbage(tmp_path / "broken.avi")
    paths = [videos[0], missing, broken, videos[1]]
    failed = run_predict(head_ckpt, paths, out=tmp_path / "out", top_k=3, species=["Duck"], device="cpu")
    assert failed == 2
    out = capsys.readouterr().out
    assert f"{missing}: cannot decode video: file not found" in out and f"{broken}: cannot decode video" in out
    assert "2/4 videos predicted" in out and "Duck" in out and "demo-world" not in out  # local weights: no demo note

    record = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert record["kind"] == "head" and record["species_source"] == "oracle" and record["window"] is None
    assert record["views"] == {"frames": T, "clips": 1, "crops": 1, "image_size": 64}
    entries = record["videos"]
    assert [e["video"] for e in entries] == [str(p) for p in paths]
    assert entries[1] == {"video": str(missing), "error": f"{missing}: cannot decode video: file not found",
                          "status": "failed", "index": 1}
    assert entries[2]["error"].startswith(f"{broken}: cannot decode video")
    for entry in (entries[0], entries[3]):
        assert entry["error"] is None and entry["species"] == [{"name": "Duck", "probability": 1.0}]
        assert len(entry["top"]) == 3 and sum(entry["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        best = max(entry["scores"], key=entry["scores"].get)
        assert entry["top"][0] == {"action": best, "score": entry["scores"][best]}
    assert not (tmp_path / "out" / "timeline.csv").exists()


def test_end_to_end_checkpoint_runs_its_own_tower(cfg: Config, videos: list[Path], tmp_path: Path):
    names, tensors = vocabulary(cfg)
    torch.manual_seed(0)
    model = end_to_end(cfg, load_pretrained=False, **tensors)
    path = save_checkpoint(tmp_path / "e2e.pt", model, cfg, vocab=names)
    prediction = predict_videos(path, videos[:1], species=["Frog"], device="cpu")[0]
    assert prediction.error is None
    np.testing.assert_allclose(prediction.scores, by_hand(path, videos[0], ["Frog"], 1, 1)[0], **TOL)
