"""``anim-clip predict``: a trained checkpoint on a user's own videos.

Each video (any container the decoders read, any length) is one segment, or with a window a
series of overlapping segments. A segment gets the checkpoint's test views (clips × crops,
docs/method.md §4.4–4.5), decoded once for all of them; the views go through the image tower (the
frozen open_clip tower of ``config.backbone`` for a head checkpoint, the model's own cross-frame
tower for an end-to-end one) and the head, and the softmax over actions is averaged over the views
(docs/method.md §5). A video's scores are the mean over its segments, so a windowed video is scored
on all of its length rather than on T frames spread over it. Species not named by the user are
predicted: by the checkpoint's separate species predictor (``species.model``) when its config has
one, from the same views rendered with the predictor's own pixels, its probabilities averaged over
them; else zero-shot by the head.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Group
from rich.progress import Progress
from rich.text import Text
from torch import Tensor

from anim_clip.config import Config
from anim_clip.data.sampling import TEST_CROPS, eval_views
from anim_clip.data.video import FallbackNotice, VideoFile, open_video
from anim_clip.errors import AnimClipError, VideoDecodeError
from anim_clip.evaluate.scoring import score_views
from anim_clip.frames import DecodedClip, FrameEncoder, decode_views, with_decoder
from anim_clip.io import atomic_write, atomic_write_json, atomic_write_text
from anim_clip.models.checkpoint import Checkpoint, head_and_tower, load_checkpoint
from anim_clip.models.features import FrameFeatures
from anim_clip.models.species import species_predictor
from anim_clip.runtime.distributed import default_device
from anim_clip.ui import console, progress_bar, table

SPECIES_SHOWN = 3  # predicted species reported per video
PLOTTED_ACTIONS = 5  # actions drawn in colour and named in a timeline plot
JSON_NAME = "predictions.json"
CSV_NAME = "timeline.csv"

Report = Callable[[int, int], None]  # (segments done, segments in all) of the current video


@dataclass(frozen=True)
class SpeciesSetting:
    """What the head conditions on: the species named by the user (``oracle``, multi-hot
    ``vector``), a prediction from the frames (``predicted``: by the separate species
    ``predictor`` when there is one, else the head's own zero-shot) or nothing (``none``).
    ``note`` tells the user when the choice was made for them."""

    source: Literal["oracle", "predicted", "none"]
    vector: Tensor | None = None
    note: str | None = None
    predictor: str | None = None  # species.model, when it predicts the species


@dataclass
class Window:
    """One window of a timeline: its span and the action scores averaged over its views."""

    start_s: float
    end_s: float
    scores: np.ndarray  # (C,)


@dataclass
class VideoPrediction:
    """Scores of one video, or why it could not be scored (``error``)."""

    video: Path
    actions: list[str]
    scores: np.ndarray | None = None  # (C,) scores averaged over views (softmax, or sigmoid: eval.scores)
    species: list[tuple[str, float]] = field(default_factory=list)  # (name, probability) used
    windows: list[Window] = field(default_factory=list)  # with --window only
    num_frames: int = 0
    fps: float = 0.0
    error: str | None = None

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps else 0.0

    def top(self, k: int) -> list[tuple[str, float]]:
        """The k best actions with their scores, best first."""
        order = np.argsort(-self.scores, kind="stable")[:k]
        return [(self.actions[i], float(self.scores[i])) for i in order]


def species_vector(names: Sequence[str], vocabulary: Sequence[str]) -> Tensor:
    """Multi-hot ``(A,)`` over the checkpoint's species; names match case-insensitively and an
    unknown one is refused with the closest known names, so a typo never silently drops a species."""
    index = {name.lower(): i for i, name in enumerate(vocabulary)}
    vector = torch.zeros(len(vocabulary))
    for name in names:
        i = index.get(name.strip().lower())
        if i is None:
            close = difflib.get_close_matches(name.strip().lower(), list(index), n=3, cutoff=0.5)
            hint = (f"close matches: {', '.join(vocabulary[index[c]] for c in close)}" if close else
                    f"known species: {', '.join(vocabulary[:10])}{', ...' if len(vocabulary) > 10 else ''}")
            raise AnimClipError(f"unknown species {name!r} (--species); {hint}")
        vector[i] = 1.0
    return vector


def species_setting(trained: str, names: Sequence[str] | None, predict: bool,
                    vocabulary: Sequence[str] | None, predictor: str | None = None) -> SpeciesSetting:
    """The species input from the options, the source the checkpoint was trained with
    (``model.species_source``) and its species ``predictor`` (``species.model``); an oracle-trained
    checkpoint given no species predicts them."""
    if names and predict:
        raise AnimClipError("give --species or --predict-species, not both")
    if trained == "none":
        if names or predict:
            raise AnimClipError("this checkpoint was trained without species (model.species_source=none): "
                                "--species and --predict-species do not apply")
        return SpeciesSetting("none")
    if names:
        if vocabulary is None:
            raise AnimClipError("this checkpoint records no species names, so --species cannot name one; "
                                "use --predict-species")
        return SpeciesSetting("oracle", species_vector(names, vocabulary))
    how = f"by the species predictor {predictor}" if predictor else "zero-shot"
    note = f"species are predicted {how} from the frames" if predictor else None
    if not predict and trained == "oracle":
        note = (f"no --species given: species are predicted {how} from the frames (this checkpoint was trained "
                "with annotated species; --species NAME gives them)")
    return SpeciesSetting("predicted", note=note, predictor=predictor)


def demo_world_note(cfg: Config, actions: Sequence[str], species: Sequence[str] | None) -> str | None:
    """A checkpoint on the tiny CLIP pretrained on rendered demo frames knows nothing beyond them: say so,
    before its scores of a real video are taken for a judgement."""
    if cfg.backbone.pretrained != "demo-world":
        return None
    known = f"{len(species)} species and {len(actions)} actions" if species else f"{len(actions)} actions"
    return (f"this checkpoint is built on the demo world (backbone.pretrained=demo-world): it knows only the demo's "
            f"{known}, drawn animals, not real footage")


def resolve_stride(window: float, stride: float | None) -> float:
    """The stride in seconds: by default half a window, so every moment is seen by two windows."""
    stride = window / 2 if stride is None else stride
    if window <= 0 or stride <= 0:
        raise AnimClipError(f"--window and --stride must be positive seconds, got {window} and {stride}")
    return stride


def window_bounds(num_frames: int, fps: float, window: float, stride: float) -> list[tuple[float, float]]:
    """``(start_s, end_s)`` of windows ``window`` seconds long every ``stride`` seconds. A last
    window ending with the video scores a tail the stride left out; a video shorter than a window
    is one window."""
    duration = num_frames / fps
    if duration <= window:
        return [(0.0, duration)]
    count = int((duration - window) / stride + 1e-9) + 1
    bounds = [(k * stride, k * stride + window) for k in range(count)]
    if round(bounds[-1][1] * fps) < num_frames:
        bounds.append((duration - window, duration))
    return bounds


def frame_range(start_s: float, end_s: float, fps: float, num_frames: int) -> tuple[int, int]:
    """Frames ``[first, stop)`` shown from ``start_s`` to ``end_s`` (frame k at k / fps), at least one."""
    first = min(round(start_s * fps), num_frames - 1)
    return first, max(first + 1, min(round(end_s * fps), num_frames))


class Predictor:
    """A checkpoint ready to score videos: tower, head, view plan and species input, built once."""

    def __init__(self, checkpoint: str | Path | Checkpoint, *, species: Sequence[str] | None = None,
                 predict_species: bool = False, clips: int | None = None, crops: int | None = None,
                 device: str | torch.device | None = None, decoder: str | None = None):
        self.ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.cfg = with_decoder(_with_views(self.ckpt.config, clips, crops), decoder)
        self.device = torch.device(device) if device is not None else default_device()
        head, tower, self.weights = head_and_tower(self.ckpt)
        if head.vocab is None:
            raise AnimClipError(f"{self.ckpt.path}: the checkpoint carries no vocabulary (text embeddings of its "
                                "actions and species), so it cannot predict on its own")
        vocab = self.ckpt.vocab or {}
        self.actions = list(vocab.get("actions") or [f"action {i}" for i in range(head.vocab.num_actions)])
        self.species_names = vocab.get("species")
        self.species = species_setting(head.cfg.species_source, species, predict_species, self.species_names,
                                       self.cfg.species.model)
        # the head's own switch between oracle, predicted (given by the predictor, or its own zero-shot), none
        head.cfg.species_source = self.species.source
        head.external_species = self.species.predictor is not None
        self.species_predictor, self.species_weights = None, None
        if self.species.predictor is not None:
            predictor, self.species_weights = species_predictor(self.cfg.species, self.species_names or [])
            self.species_predictor = predictor.to(self.device).eval()
        self.head = head.to(self.device).eval()
        self.tower = tower.to(self.device).eval()
        self.num_frames = head.dims["num_frames"]
        self.fallbacks = FallbackNotice()

    def describe(self) -> dict[str, Any]:
        """What produced the scores, for the JSON file."""
        s = self.cfg.sampling
        return {
            "checkpoint": str(self.ckpt.path), "kind": self.ckpt.kind,
            "backbone": {"model": self.cfg.backbone.model, "weights": self.weights},
            "views": {"frames": self.num_frames, "clips": s.test_clips, "crops": s.test_crops, "image_size": s.image_size},
            "species_source": self.species.source, "species_note": self.species.note,
            "species_predictor": None if self.species_weights is None else
            {"model": self.species.predictor, "weights": self.species_weights.pretrained or "random"},
        }

    def predict(self, path: str | Path, *, window: float | None = None, stride: float | None = None,
                report: Report | None = None) -> VideoPrediction:
        """Scores of one video; a video that cannot be decoded comes back with ``error`` set."""
        path = Path(path)
        s = self.cfg.sampling
        try:
            with open_video(path, s.decoder, s.decode_threads, self.device) as video:
                segments = self._segments(video, window, stride)
                ranges = [(first, stop) for _, _, first, stop in segments]
                actions, species = self._score_segments(video, ranges, report or (lambda done, total: None))
                num_frames, fps = video.num_frames, video.fps
                self.fallbacks(video.fallback)
        except VideoDecodeError as e:
            return VideoPrediction(path, self.actions, error=str(e))
        windows = [Window(a, b, scores) for (a, b, _, _), scores in zip(segments, actions)] if window else []
        return VideoPrediction(path, self.actions, actions.mean(0), self._species_report(species.mean(0)),
                               windows, num_frames, fps)

    def _segments(self, video: VideoFile, window: float | None,
                  stride: float | None) -> list[tuple[float, float, int, int]]:
        """``(start_s, end_s, first frame, stop frame)`` of the whole video, or of each window."""
        if window is None:
            return [(0.0, video.num_frames / video.fps if video.fps else 0.0, 0, video.num_frames)]
        if not video.fps:
            raise VideoDecodeError(video.path, "the container declares no frame rate, which --window needs")
        bounds = window_bounds(video.num_frames, video.fps, window, resolve_stride(window, stride))
        return [(a, b, *frame_range(a, b, video.fps, video.num_frames)) for a, b in bounds]

    def decode(self, video: VideoFile, first: int, stop: int, index: int) -> DecodedClip:
        """The test views of frames ``[first, stop)``, every needed frame decoded once."""
        s = self.cfg.sampling
        views = eval_views(stop - first, video.height, video.width, self.num_frames, s.test_clips, s.test_crops,
                           s.image_size, s.resize)
        return decode_views(video, index, views, first)

    def encode(self, decoded: Iterable[DecodedClip]) -> Iterator[tuple[FrameFeatures, Tensor | None]]:
        """Each decoded segment's features, and the species vector ``(A,)`` its views are given: the
        species named, or the species predictor's probabilities averaged over the views; None when
        the head predicts them itself or takes none."""
        for _, features in FrameEncoder(self.tower, self.device, self.cfg, self.species_predictor).encode(decoded):
            vector = features.species.mean(0) if self.species_predictor is not None else self.species.vector
            yield features, None if vector is None else vector.to(self.device)

    def _score_segments(self, video: VideoFile, ranges: list[tuple[int, int]],
                        report: Report) -> tuple[np.ndarray, np.ndarray]:
        """``(S, C)`` scores and ``(S, A)`` species vectors used, each averaged over a segment's
        views; segments are decoded one at a time and encoded in batches of about
        ``backbone.batch_frames`` frames."""
        decoded = (self.decode(video, first, stop, index) for index, (first, stop) in enumerate(ranges))
        actions, species = [], []
        for features, vector in self.encode(decoded):
            given = None if vector is None else vector.expand(features.cls.shape[0], -1)
            scored = score_views(self.head, features, given, self.cfg)
            actions.append(scored.scores.mean(0))
            species.append(scored.species.mean(0))
            report(len(actions), len(ranges))
        return torch.stack(actions).cpu().numpy(), torch.stack(species).float().cpu().numpy()

    def _species_report(self, probabilities: np.ndarray) -> list[tuple[str, float]]:
        """Oracle: the species given; predicted: the most probable ones; none: nothing."""
        if self.species.source == "none":
            return []
        order = np.argsort(-probabilities, kind="stable")
        order = order[probabilities[order] > 0] if self.species.source == "oracle" else order[:SPECIES_SHOWN]
        names = self.species_names or [f"species {i}" for i in range(len(probabilities))]
        return [(names[i], float(probabilities[i])) for i in order]


def _with_views(cfg: Config, clips: int | None, crops: int | None) -> Config:
    """``cfg`` with the test views overridden where asked (validated here: a bad value is an option)."""
    if clips is not None and clips < 1:
        raise AnimClipError(f"--clips must be at least 1, got {clips}")
    if crops is not None and crops not in TEST_CROPS:
        raise AnimClipError(f"--crops must be one of {', '.join(map(str, TEST_CROPS))}, got {crops}")
    s = cfg.sampling
    views = dataclasses.replace(s, test_clips=clips or s.test_clips, test_crops=crops or s.test_crops)
    return dataclasses.replace(cfg, sampling=views)


def _task_report(bar: Progress, description: str) -> Report:
    """A bar row for one video's windows, sized once the video is open and its windows known."""
    task = bar.add_task(description, total=None)
    return lambda done, total: bar.update(task, completed=done, total=total)


def iter_predictions(predictor: Predictor, videos: Sequence[str | Path], *, window: float | None = None,
                     stride: float | None = None, progress: bool = True) -> Iterator[VideoPrediction]:
    """Predict ``videos`` one by one, with one bar over the videos, or one per video over its windows."""
    stride = None if window is None else resolve_stride(window, stride)
    with progress_bar("windows" if window else "videos", disable=not progress) as bar:
        overall = None if window else bar.add_task("predict", total=len(videos))
        for n, video in enumerate(videos, 1):
            report = _task_report(bar, f"[{n}/{len(videos)}] {Path(video).name}") if window else None
            yield predictor.predict(video, window=window, stride=stride, report=report)
            if overall is not None:
                bar.advance(overall)


def predict_videos(checkpoint: str | Path | Checkpoint, videos: Sequence[str | Path], *,
                   species: Sequence[str] | None = None, predict_species: bool = False,
                   window: float | None = None, stride: float | None = None, clips: int | None = None,
                   crops: int | None = None, device: str | torch.device | None = None, decoder: str | None = None,
                   progress: bool = False) -> list[VideoPrediction]:
    """Score every video with ``checkpoint`` (see :class:`Predictor` and :func:`iter_predictions`)."""
    predictor = Predictor(checkpoint, species=species, predict_species=predict_species, clips=clips, crops=crops,
                          device=device, decoder=decoder)
    return list(iter_predictions(predictor, videos, window=window, stride=stride, progress=progress))


# ---------------------------------------------------------------------------------------------- output


def _rounded(x: float) -> float:
    return round(float(x), 6)


def _top_json(pairs: list[tuple[str, float]]) -> list[dict[str, Any]]:
    return [{"action": name, "score": _rounded(score)} for name, score in pairs]


def prediction_record(prediction: VideoPrediction, top_k: int) -> dict[str, Any]:
    """One video's entry of ``predictions.json``."""
    record: dict[str, Any] = {"video": str(prediction.video), "error": prediction.error}
    if prediction.error is not None:
        return record
    windows = [{"start_s": _rounded(w.start_s), "end_s": _rounded(w.end_s),
                "top": _top_json([(prediction.actions[i], w.scores[i]) for i in np.argsort(-w.scores)[:top_k]]),
                "scores": {name: _rounded(s) for name, s in zip(prediction.actions, w.scores)}}
               for w in prediction.windows]
    return {
        **record,
        "frames": prediction.num_frames, "fps": _rounded(prediction.fps), "duration_s": _rounded(prediction.duration_s),
        "species": [{"name": name, "probability": _rounded(p)} for name, p in prediction.species],
        "top": _top_json(prediction.top(top_k)),
        "scores": {name: _rounded(s) for name, s in zip(prediction.actions, prediction.scores)},
        "windows": windows,
    }


def write_json(path: str | Path, predictions: Sequence[VideoPrediction], header: dict[str, Any], top_k: int) -> Path:
    return atomic_write_json(path, {**header, "videos": [prediction_record(p, top_k) for p in predictions]})


def write_timeline_csv(path: str | Path, predictions: Sequence[VideoPrediction]) -> Path:
    """``video, start_s, end_s`` then one score column per action, one row per window."""
    rows = [p for p in predictions if p.windows]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["video", "start_s", "end_s", *rows[0].actions])
    for p in rows:
        for w in p.windows:
            writer.writerow([str(p.video), f"{w.start_s:.3f}", f"{w.end_s:.3f}", *(f"{s:.6f}" for s in w.scores)])
    return atomic_write_text(path, buffer.getvalue())


def plot_timeline(path: str | Path, prediction: VideoPrediction, top: int = PLOTTED_ACTIONS) -> Path:
    """Action scores over time (at window centres): the ``top`` actions that peak highest in
    colour and named, the rest in grey. Drawn with the Agg canvas, so no display is needed."""
    from matplotlib.figure import Figure

    scores = np.stack([w.scores for w in prediction.windows])
    centres = [(w.start_s + w.end_s) / 2 for w in prediction.windows]
    named = np.argsort(-scores.max(axis=0), kind="stable")[:top]
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.add_subplot()
    for c in np.setdiff1d(np.arange(scores.shape[1]), named):
        ax.plot(centres, scores[:, c], color="0.8", linewidth=0.8)
    for c in named:
        ax.plot(centres, scores[:, c], marker="o", markersize=3, label=prediction.actions[c])
    ax.set(xlim=(0, prediction.duration_s), ylim=(0, 1), xlabel="time (s, window centre)", ylabel="score",
           title=f"{prediction.video.name}: action scores over time")
    ax.legend(loc="upper right", fontsize="small")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def timeline_plot_names(predictions: Sequence[VideoPrediction]) -> list[str]:
    """``timeline_<video stem>.png`` per video, numbered where two videos share a stem."""
    stems = [p.video.stem for p in predictions]
    return [f"timeline_{stem}.png" if stems.count(stem) == 1 else f"timeline_{stem}_{i}.png"
            for i, stem in enumerate(stems, 1)]


def write_outputs(out: str | Path, predictions: Sequence[VideoPrediction], header: dict[str, Any],
                  top_k: int) -> list[Path]:
    """``predictions.json``; with windows also ``timeline.csv`` and a plot per video."""
    out = Path(out)
    written = [write_json(out / JSON_NAME, predictions, header, top_k)]
    if any(p.windows for p in predictions):
        written.append(write_timeline_csv(out / CSV_NAME, predictions))
        written += [plot_timeline(out / name, p) for p, name in zip(predictions, timeline_plot_names(predictions))
                    if p.windows]
    return written


def species_text(prediction: VideoPrediction, source: str) -> str:
    """The species a video was scored as: those given (``--species``) by name, predicted ones with
    their probability, whatever its value (a certain prediction is still a prediction)."""
    if source == "oracle":
        return ", ".join(name for name, _ in prediction.species) + " (given)"
    return ", ".join(f"{name} {p:.2f}" for name, p in prediction.species) or "none"


def prediction_table(prediction: VideoPrediction, top_k: int, species_source: str) -> Group:
    """A line naming the video and the species it was scored as (too long for a table title),
    then a table of the top actions."""
    species = species_text(prediction, species_source)
    count = len(prediction.windows)
    extent = f", {count} window{'s' * (count != 1)}" if count else ""
    heading = Text.assemble((prediction.video.name, "bold"), f" ({prediction.duration_s:.1f} s{extent}), species: {species}")
    rows = [(name, f"{score:.3f}") for name, score in prediction.top(top_k)]
    return Group(heading, table(f"top {len(rows)} actions", ["action", "score"], rows))


def run_predict(checkpoint: str | Path, videos: Sequence[str | Path], *, out: str | Path, top_k: int = 5,
                species: Sequence[str] | None = None, predict_species: bool = False, window: float | None = None,
                stride: float | None = None, clips: int | None = None, crops: int | None = None,
                device: str | None = None, decoder: str | None = None) -> int:
    """What ``anim-clip predict`` does: print a table per video as it is scored, write the files
    (also on Ctrl-C, for the videos done); returns how many videos failed."""
    if top_k < 1:
        raise AnimClipError(f"--top-k must be at least 1, got {top_k}")
    predictor = Predictor(checkpoint, species=species, predict_species=predict_species, clips=clips, crops=crops,
                          device=device, decoder=decoder)
    for note in (demo_world_note(predictor.cfg, predictor.actions, predictor.species_names), predictor.species.note):
        if note:
            console.print(f"[yellow]{note}[/]", soft_wrap=True)
    predictions: list[VideoPrediction] = []
    try:
        for prediction in iter_predictions(predictor, videos, window=window, stride=stride,
                                           progress=len(videos) > 1 or window is not None):
            predictions.append(prediction)
            if prediction.error is not None:
                console.print(f"[bold red]error:[/] {prediction.error}", soft_wrap=True, highlight=False)
            else:
                console.print(prediction_table(prediction, top_k, predictor.species.source))
    finally:
        header = {**predictor.describe(), "window": None if window is None else
                  {"length_s": window, "stride_s": resolve_stride(window, stride)}}
        written = write_outputs(out, predictions, header, top_k) if predictions else []
    failed = sum(p.error is not None for p in predictions)
    console.print(f"{len(predictions) - failed}/{len(videos)} videos predicted -> "
                  f"{', '.join(str(p) for p in written) or 'nothing written'}", soft_wrap=True)
    return failed
