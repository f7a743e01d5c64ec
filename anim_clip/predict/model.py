"""A trained checkpoint on a user's own videos: the scores of each.

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

Many videos are scored as one stream (:meth:`Predictor.stream`): decoding threads run ahead
(:mod:`anim_clip.predict.stream`) and the segments of any videos share the tower's batches, so
neither the number nor the length of the videos sets the memory used.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from anim_clip.config import Config
from anim_clip.data.sampling import TEST_CROPS, eval_views
from anim_clip.data.video import FallbackNotice, VideoFile, open_video
from anim_clip.errors import AnimClipError, VideoDecodeError
from anim_clip.evaluate.scoring import score_views
from anim_clip.frames import DecodedClip, FrameEncoder, decode_views, with_decoder
from anim_clip.models.checkpoint import Checkpoint, head_and_tower, load_checkpoint
from anim_clip.models.features import FrameFeatures
from anim_clip.models.species import species_predictor
from anim_clip.predict.stream import DecodeAhead
from anim_clip.runtime.distributed import default_device

SPECIES_SHOWN = 3  # predicted species reported per video


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
    frames_used: int = 0  # frames decoded for it (a frame shared by overlapping windows counts in each)
    species_source: Literal["oracle", "predicted", "none"] = "none"  # where ``species`` came from

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
    """A checkpoint on the tiny CLIP pretrained on rendered demo frames sees real footage through a tower
    that never saw any: say so, before its scores of a real video are taken for a judgement."""
    if cfg.backbone.pretrained != "demo-world":
        return None
    return ("this checkpoint's image tower is the tiny CLIP shipped for the demo (backbone.pretrained=demo-world), "
            "trained only on drawn animals: it runs the pipeline, but its scores of real footage mean little")


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


@dataclass
class Opened:
    """A video open for scoring: the segments its decoding thread will send, after this."""

    num_frames: int
    fps: float
    segments: list[tuple[float, float, int, int]]  # (start_s, end_s, first frame, stop frame)


@dataclass
class _Scoring:
    """One video's segments scored so far, until all have come back from the tower."""

    path: Path
    opened: Opened | None = None
    actions: dict[int, np.ndarray] = field(default_factory=dict)
    species: dict[int, np.ndarray] = field(default_factory=dict)
    frames_used: int = 0

    @property
    def done(self) -> bool:
        return self.opened is not None and len(self.actions) == len(self.opened.segments)


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
        self.encoder = FrameEncoder(self.tower, self.device, self.cfg, self.species_predictor)
        self.num_frames = head.dims["num_frames"]
        self.fallbacks = FallbackNotice()

    def describe(self) -> dict[str, Any]:
        """What produced the scores, for the JSON file."""
        s = self.cfg.sampling
        return {
            "checkpoint": str(self.ckpt.path), "kind": self.ckpt.kind,
            "backbone": {"model": self.cfg.backbone.model, "weights": self.weights},
            "views": {"frames": self.num_frames, "clips": s.test_clips, "crops": s.test_crops, "image_size": s.image_size},
            "decoder": s.decoder,
            "actions": self.actions,
            "species_source": self.species.source, "species_note": self.species.note,
            "species_predictor": None if self.species_weights is None else
            {"model": self.species.predictor, "weights": self.species_weights.pretrained or "random"},
        }

    def predict(self, path: str | Path, *, window: float | None = None, stride: float | None = None) -> VideoPrediction:
        """Scores of one video; a video that cannot be decoded comes back with ``error`` set."""
        [(_, prediction)] = self.stream([Path(path)], window=window, stride=stride, workers=1)
        return prediction

    def stream(self, videos: Sequence[Path], *, window: float | None = None, stride: float | None = None,
               workers: int = 4, on_segment: Callable[[], None] | None = None) -> Iterator[tuple[int, VideoPrediction]]:
        """``(index in videos, prediction)`` of every video as it finishes (not in order): videos are
        decoded in ``workers`` threads (:class:`DecodeAhead`) and their segments, of any video, go
        through the tower together in batches of about ``backbone.batch_frames`` frames."""
        stride = None if window is None else resolve_stride(window, stride)
        scoring: dict[int, _Scoring] = {}
        owner: dict[int, tuple[int, int]] = {}  # a segment's number in the stream -> (video, segment)

        def segments() -> Iterator[DecodedClip]:
            decoding = DecodeAhead(lambda path, put: self._decode_video(path, window, stride, put), videos, workers)
            for number, (v, item) in enumerate(decoding):
                state = scoring.setdefault(v, _Scoring(videos[v]))
                if isinstance(item, Opened):
                    state.opened = item
                    continue
                owner[number], item.index = (v, item.index), number
                yield item

        for clip, features in self.encoder.encode(segments()):
            v, segment = owner.pop(clip.index)
            state = scoring.get(v)
            if state is None:  # a segment of a video that failed further on
                continue
            if features is None:
                del scoring[v]
                yield v, VideoPrediction(state.path, self.actions, error=clip.error)
                continue
            self.fallbacks(clip.fallback)
            scored = score_views(self.head, features, self._given(features), self.cfg)
            state.actions[segment] = scored.scores.mean(0).cpu().numpy()
            state.species[segment] = scored.species.mean(0).float().cpu().numpy()
            state.frames_used += len(np.unique(clip.frame_indices))
            if on_segment is not None:
                on_segment()
            if state.done:
                del scoring[v]
                yield v, self._prediction(state, window is not None)

    def _decode_video(self, path: Path, window: float | None, stride: float | None, put: Callable[[object], None]) -> None:
        """In a decoding thread: the video's :class:`Opened`, then each segment's decoded views; a
        video that cannot be decoded sends one clip carrying the error instead."""
        s = self.cfg.sampling
        try:
            with open_video(path, s.decoder, s.decode_threads, self.device) as video:
                segments = self._segments(video, window, stride)
                put(Opened(video.num_frames, video.fps, segments))
                for index, (_, _, first, stop) in enumerate(segments):
                    put(self.decode(video, first, stop, index))
        except VideoDecodeError as e:
            put(DecodedClip(-1, error=str(e)))

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

    def _given(self, features: FrameFeatures) -> Tensor | None:
        """The species vector every view of a segment is given: the species named, or the species
        predictor's probabilities averaged over the views; None when the head predicts them itself
        or takes none."""
        vector = features.species.mean(0) if self.species_predictor is not None else self.species.vector
        return None if vector is None else vector.to(self.device).expand(features.cls.shape[0], -1)

    def encode(self, decoded: Iterable[DecodedClip]) -> Iterator[tuple[FrameFeatures, Tensor | None]]:
        """Each decoded segment's features, and the species vector ``(A,)`` its views are given."""
        for _, features in self.encoder.encode(decoded):
            given = self._given(features)
            yield features, None if given is None else given[0]

    def _prediction(self, state: _Scoring, windowed: bool) -> VideoPrediction:
        """A finished video's scores: the mean over its segments (and each window's, with a window)."""
        opened = state.opened
        actions = np.stack([state.actions[k] for k in range(len(opened.segments))])
        species = np.stack([state.species[k] for k in range(len(opened.segments))])
        windows = [Window(a, b, scores) for (a, b, _, _), scores in zip(opened.segments, actions)] if windowed else []
        return VideoPrediction(state.path, self.actions, actions.mean(0), self._species_report(species.mean(0)),
                               windows, opened.num_frames, opened.fps, frames_used=state.frames_used,
                               species_source=self.species.source)

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


def predict_videos(checkpoint: str | Path | Checkpoint, videos: Sequence[str | Path], *,
                   species: Sequence[str] | None = None, predict_species: bool = False,
                   window: float | None = None, stride: float | None = None, clips: int | None = None,
                   crops: int | None = None, device: str | torch.device | None = None, decoder: str | None = None,
                   workers: int = 2) -> list[VideoPrediction]:
    """Score every video with ``checkpoint`` (see :class:`Predictor`), in the order given."""
    predictor = Predictor(checkpoint, species=species, predict_species=predict_species, clips=clips, crops=crops,
                          device=device, decoder=decoder)
    done = dict(predictor.stream([Path(v) for v in videos], window=window, stride=stride, workers=workers))
    return [done[i] for i in range(len(videos))]
