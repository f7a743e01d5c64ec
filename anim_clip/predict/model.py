"""A trained checkpoint on a user's own videos: the scores of each.

Each video (any container the decoders read, any length) is one segment, or with a window a
series of overlapping segments. A segment gets the checkpoint's test views, decoded once for all of
them, scored by :class:`~anim_clip.evaluate.scorer.VideoScorer` (image tower, species input, head),
the softmax over actions averaged over the views (docs/method.md §5). A video's scores are the mean
over its segments, so a windowed video is scored on all of its length rather than on T frames
spread over it.

Many videos are scored as one stream (:meth:`Predictor.stream`): decoding threads run ahead
(:mod:`anim_clip.predict.stream`) and the segments of any videos share the tower's batches, so
neither the number nor the length of the videos sets the memory used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from anim_clip.config import Config
from anim_clip.data.video import VideoFile, open_video
from anim_clip.errors import AnimClipError, VideoDecodeError
from anim_clip.evaluate.scorer import VideoScorer
from anim_clip.frames import DecodedClip
from anim_clip.models.checkpoint import Checkpoint
from anim_clip.predict.stream import DecodeAhead

SPECIES_SHOWN = 3  # predicted species reported per video


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


class Predictor(VideoScorer):
    """A :class:`VideoScorer` that scores many videos as one stream, or windows of them."""

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
            scored = self.score(features)
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

    def _prediction(self, state: _Scoring, windowed: bool) -> VideoPrediction:
        """A finished video's scores: the mean over its segments (and each window's, with a window)."""
        opened = state.opened
        actions = np.stack([state.actions[k] for k in range(len(opened.segments))])
        species = np.stack([state.species[k] for k in range(len(opened.segments))])
        windows = [Window(a, b, scores) for (a, b, _, _), scores in zip(opened.segments, actions)] if windowed else []
        return VideoPrediction(state.path, self.actions, actions.mean(0), self._species_report(species.mean(0)),
                               windows, opened.num_frames, opened.fps, frames_used=state.frames_used,
                               species_source=self.inputs.source)

    def _species_report(self, probabilities: np.ndarray) -> list[tuple[str, float]]:
        """Oracle: the species given; predicted: the most probable ones; none: nothing."""
        if self.inputs.species == "none":
            return []
        order = np.argsort(-probabilities, kind="stable")
        order = order[probabilities[order] > 0] if self.inputs.species == "annotated" else order[:SPECIES_SHOWN]
        names = self.species_names or [f"species {i}" for i in range(len(probabilities))]
        return [(names[i], float(probabilities[i])) for i in order]


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
