"""A copy of a video with the model's reading drawn on every frame (the species, then the top
actions of the moment: the mean of the windows covering it, as events and budgets use), for a
person to check the model by eye. Frames stream through one at a time (PyAV decode, PIL draw,
PyAV H.264 encode), so a video of any length needs the memory of a frame. Each overlay carries
the fingerprint of the labels it shows (its ``comment`` tag), so a resumed run keeps the overlays
already written for the same predictions and redraws only the others."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.container import InputContainer, OutputContainer
from PIL import Image, ImageDraw, ImageFont

from anim_clip.errors import VideoDecodeError
from anim_clip.export.records import Record, Timeline, species_label, species_source, timeline
from anim_clip.io import atomic_write

Report = Callable[[int], None]  # frames written so far
SHOWN_ACTIONS = 3  # actions written on a frame
MARGIN = 4  # pixels around the label's text


def label_lines(line: Timeline, span: int | None, species: str, top: int = SHOWN_ACTIONS) -> list[str]:
    """The label of one span: the species, then its ``top`` actions with their scores."""
    if span is None:
        return [f"species: {species}", "(no window covers this time)"]
    scores = line.scores[span]
    order = np.argsort(-scores, kind="stable")[:top]
    return [f"species: {species}", *(f"{line.actions[c]} {scores[c]:.2f}" for c in order)]


def label_image(lines: list[str], font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> Image.Image:
    """White text on a black box, pasted over the frame's top-left corner."""
    text = "\n".join(lines)
    *_, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((0, 0), text, font=font)
    image = Image.new("RGB", (right + 2 * MARGIN, bottom + 2 * MARGIN))
    ImageDraw.Draw(image).multiline_text((MARGIN, MARGIN), text, fill="white", font=font)
    return image


def copy_with_labels(source: InputContainer, out: OutputContainer, line: Timeline, fps: float, species: str,
                     top: int, report: Report) -> None:
    """Decode, label and encode frame by frame; one label image per span, drawn once."""
    stream_in = source.streams.video[0]
    stream_in.thread_type = "AUTO"
    stream = out.add_stream("libx264", rate=stream_in.average_rate or Fraction(fps).limit_denominator(1001))
    stream.pix_fmt = "yuv420p"
    labels: dict[int | None, Image.Image] = {}
    for k, frame in enumerate(source.decode(stream_in)):
        # upright as a player shows it: the display rotation a phone records (counterclockwise degrees)
        image = frame.to_image().rotate(round(frame.rotation / 90) % 4 * 90, expand=True)
        if k == 0:  # yuv420p needs even sizes
            stream.width, stream.height = image.width // 2 * 2, image.height // 2 * 2
            font = ImageFont.load_default(size=max(10, stream.height // 20))
        image = image.crop((0, 0, stream.width, stream.height))
        span = line.span_at(k / fps)
        if span not in labels:
            labels[span] = label_image(label_lines(line, span, species, top), font)
        image.paste(labels[span], (0, 0))
        out.mux(stream.encode(av.VideoFrame.from_image(image)))
        report(k + 1)
    out.mux(stream.encode())


def fingerprint(record: Record, header: Mapping[str, Any], top: int = SHOWN_ACTIONS) -> str:
    """What an overlay's pixels depend on (the video, its scores and species, the checkpoint), hashed."""
    drawn = {key: value for key, value in record.items() if key != "index"}  # its place among the inputs is not drawn
    text = json.dumps([drawn, species_source(record, header), header.get("checkpoint"), top], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def is_current(path: str | Path, record: Record, header: Mapping[str, Any], top: int = SHOWN_ACTIONS) -> bool:
    """Whether ``path`` is a complete overlay (written atomically) of these very predictions."""
    try:
        with av.open(str(path)) as container:
            return container.metadata.get("comment") == f"anim-clip {fingerprint(record, header, top)}"
    except (OSError, av.FFmpegError):
        return False


def write_overlay(path: str | Path, record: Record, header: Mapping[str, Any], top: int = SHOWN_ACTIONS,
                  report: Report | None = None) -> Path:
    """Write ``path`` (MP4, H.264): the scored video of ``record`` with its label on every frame.
    Frame k is at k / fps seconds, as predict counts it. ``header`` is ``Predictor.describe()``;
    ``report(frames done)`` follows the encoding."""
    line = timeline(record)
    species = species_label(record, species_source(record, header))
    video = Path(record["video"])

    def write(tmp: Path) -> None:
        try:
            with av.open(str(video)) as source, av.open(str(tmp), "w", format="mp4") as out:
                out.metadata["comment"] = f"anim-clip {fingerprint(record, header, top)}"
                copy_with_labels(source, out, line, record["fps"], species, top, report or (lambda done: None))
        except av.FFmpegError as e:
            raise VideoDecodeError(video, f"cannot draw its overlay: {e}") from None

    return atomic_write(path, write)
