"""The demo world: species, actions, motion, and the one renderer behind demo clips and captioned frames.

Actions are defined only by how an animal's position, facing and pose change over time, so a model
that sees per-frame embeddings has to compare frames to tell them apart. Backgrounds are drawn
independently of the action, so no single frame's backdrop gives the label away. A clip frame is a
render of a scene state; a captioned frame is a render of a random scene state with a caption of
what it shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
T = TypeVar("T")

ACTIONS: tuple[str, ...] = (
    "Walking", "Running", "Jumping", "Flying", "Swimming", "Keeping still", "Turning Around",
)
# Relative frequencies, unequal on purpose: a frequency baseline must be meaningful but beatable.
ACTION_WEIGHT: dict[str, float] = {
    "Walking": 1.0, "Running": 0.7, "Jumping": 0.6, "Flying": 0.6,
    "Swimming": 0.8, "Keeping still": 1.0, "Turning Around": 0.4,
}
# Two-action clips: one animal, the second action continuing from where the first ended.
SEQUENCES: tuple[tuple[str, str], ...] = (
    ("Walking", "Turning Around"), ("Turning Around", "Walking"), ("Walking", "Running"),
    ("Walking", "Keeping still"), ("Keeping still", "Running"), ("Running", "Keeping still"),
    ("Keeping still", "Flying"), ("Keeping still", "Jumping"), ("Swimming", "Keeping still"),
    ("Turning Around", "Swimming"),
)
SUPERSAMPLE = 2  # frames are drawn at twice the size and box-filtered down: smooth sub-pixel motion


@dataclass(frozen=True)
class Species:
    """A species: its name (Animal Kingdom spelling), body length as a fraction of the frame,
    colour variants (word, RGB), the actions it performs and how common it is."""

    name: str
    length: float
    colours: tuple[tuple[str, RGB], ...]
    actions: tuple[str, ...]
    weight: float


# Alphabetical, as in Animal Kingdom's animal_label.csv. Texture: clownfish striped, frog and gecko
# spotted, the rest plain.
SPECIES: tuple[Species, ...] = (
    Species("Clownfish", 0.26, (("orange", (240, 110, 20)), ("red", (190, 45, 30))),
            ("Swimming", "Keeping still", "Turning Around"), 0.7),
    Species("Common Crane", 0.36, (("grey", (150, 155, 165)),),
            ("Walking", "Running", "Flying", "Keeping still"), 0.9),
    Species("Duck", 0.28, (("brown", (140, 95, 55)), ("white", (235, 235, 228))),
            ("Walking", "Swimming", "Flying", "Turning Around"), 0.8),
    Species("Fox", 0.40, (("orange", (215, 105, 35)), ("grey", (120, 120, 128))),
            ("Walking", "Running", "Jumping", "Turning Around"), 1.2),
    Species("Frog", 0.22, (("green", (70, 160, 60)), ("brown", (125, 105, 55))),
            ("Jumping", "Swimming", "Keeping still"), 1.0),
    Species("Gecko", 0.34, (("green", (110, 190, 70)), ("yellow", (220, 190, 60)), ("blue", (70, 130, 210))),
            ("Walking", "Running", "Keeping still", "Turning Around"), 0.8),
    Species("Rabbit", 0.28, (("brown", (150, 115, 80)), ("white", (232, 230, 224)), ("grey", (140, 140, 140))),
            ("Running", "Jumping", "Keeping still"), 1.0),
)


@dataclass(frozen=True)
class AnimalPlan:
    """One animal of a clip: its species and the actions it performs, in order."""

    species: Species
    actions: tuple[str, ...]


ClipPlan = tuple[AnimalPlan, ...]


def clip_labels(plan: ClipPlan) -> list[tuple[str, str]]:
    """The clip's (species, action) annotations, in Animal Kingdom's pair-list order."""
    return [(animal.species.name, action) for animal in plan for action in animal.actions]


@dataclass(frozen=True)
class Appearance:
    """What stays fixed for one animal during a clip."""

    species: Species
    colour: RGB
    colour_name: str
    length: float  # body length, fraction of the frame
    spots: np.ndarray  # (k, 3): centre (u, v) in the unit body disc and radius


@dataclass(frozen=True)
class Pose:
    """One animal's state at one instant; positions are fractions of the frame (y down)."""

    x: float
    y: float
    facing: float  # +1 right, -1 left, in between while turning
    tilt: float  # nose up > 0, radians
    phase: float  # limb cycle (legs, wings, tail)
    stride: float  # limb swing amplitude, 0 when still
    reach: float  # 0 legs tucked, 1 legs stretched (hops, kicks)
    airborne: bool
    flying: bool


@dataclass(frozen=True)
class Track:
    """An animal's poses over a clip, one array entry per frame."""

    x: np.ndarray
    y: np.ndarray
    facing: np.ndarray
    tilt: np.ndarray
    phase: np.ndarray
    stride: np.ndarray
    reach: np.ndarray
    airborne: np.ndarray
    flying: np.ndarray

    def pose(self, i: int) -> Pose:
        return Pose(float(self.x[i]), float(self.y[i]), float(self.facing[i]), float(self.tilt[i]),
                    float(self.phase[i]), float(self.stride[i]), float(self.reach[i]),
                    bool(self.airborne[i]), bool(self.flying[i]))

    def shifted(self, dx: float, dy: float) -> Track:
        return replace(self, x=self.x + dx, y=self.y + dy)


def _track(t: np.ndarray, x: np.ndarray | float = 0.0, y: np.ndarray | float = 0.0,
           facing: np.ndarray | float = 1.0, tilt: np.ndarray | float = 0.0,
           phase: np.ndarray | float = 0.0, stride: np.ndarray | float = 0.0,
           reach: np.ndarray | float = 0.0, airborne: np.ndarray | bool = False,
           flying: np.ndarray | bool = False) -> Track:
    """A track over times t, broadcasting scalars to per-frame arrays."""
    def full(v: np.ndarray | float | bool) -> np.ndarray:
        return np.broadcast_to(np.asarray(v), t.shape).copy()
    return Track(full(x).astype(float), full(y).astype(float), full(facing).astype(float),
                 full(tilt).astype(float), full(phase).astype(float), full(stride).astype(float),
                 full(reach).astype(float), full(airborne).astype(bool), full(flying).astype(bool))


# Motion of one action over segment times t (clip-time units: the whole clip lasts 1, so the motion
# does not depend on the frame count). d is the direction of travel (+1 right, -1 left). Positions
# start at 0 and are placed in the frame later.

def _walking(t: np.ndarray, d: float, rng: np.random.Generator) -> Track:
    speed, steps = rng.uniform(0.16, 0.28), rng.uniform(3.0, 5.0)
    phase = 2 * np.pi * steps * t + rng.uniform(0, 2 * np.pi)
    return _track(t, x=d * speed * t, y=-0.012 * np.abs(np.sin(phase)), facing=d, phase=phase, stride=0.6)


def _running(t: np.ndarray, d: float, rng: np.random.Generator) -> Track:
    speed, steps = rng.uniform(0.5, 0.8), rng.uniform(7.0, 10.0)
    phase = 2 * np.pi * steps * t + rng.uniform(0, 2 * np.pi)
    return _track(t, x=d * speed * t, y=-0.035 * np.abs(np.sin(phase)), facing=d, tilt=-0.08,
                  phase=phase, stride=1.0)


def _jumping(t: np.ndarray, d: float, rng: np.random.Generator) -> Track:
    """Parabolic hops; the animal moves forward only while in the air."""
    hops, distance, height, air = rng.uniform(1.6, 3.0), rng.uniform(0.15, 0.35), rng.uniform(0.12, 0.22), 0.7
    cycles = hops * t + rng.uniform(0.7, 1.0)
    p = cycles % 1.0
    q = np.minimum(p / air, 1.0)
    in_air = p < air
    progress = np.floor(cycles) + q
    return _track(t, x=d * distance * (progress - progress[0]) / hops,
                  y=np.where(in_air, -height * 4 * q * (1 - q), 0.0), facing=d,
                  tilt=np.where(in_air, 0.7 * (0.5 - q), 0.0), reach=np.where(in_air, 1.0, 0.0),
                  airborne=in_air & (q > 0.05) & (q < 0.95))


def _flying(t: np.ndarray, d: float, rng: np.random.Generator) -> Track:
    """Wavy, rising flight with flapping wings."""
    speed, rise = rng.uniform(0.3, 0.6), rng.uniform(0.05, 0.25)
    wave, waves = rng.uniform(0.02, 0.05), rng.uniform(1, 2)
    offset = rng.uniform(0, 2 * np.pi)
    y = -rise * t + wave * (np.sin(2 * np.pi * waves * t + offset) - np.sin(offset))
    climb = rise - wave * 2 * np.pi * waves * np.cos(2 * np.pi * waves * t + offset)
    phase = 2 * np.pi * rng.uniform(6, 10) * t + rng.uniform(0, 2 * np.pi)
    return _track(t, x=d * speed * t, y=y, facing=d, tilt=0.35 * np.arctan(climb / speed), phase=phase,
                  stride=1.0, airborne=True, flying=True)


def _swimming(t: np.ndarray, d: float, rng: np.random.Generator) -> Track:
    """Sinusoidal undulating path, nose following the path, tail or legs beating."""
    speed, amplitude, waves = rng.uniform(0.2, 0.4), rng.uniform(0.05, 0.09), rng.uniform(1.0, 2.0)
    offset = rng.uniform(0, 2 * np.pi)
    y = amplitude * (np.sin(2 * np.pi * waves * t + offset) - np.sin(offset))
    sink = amplitude * 2 * np.pi * waves * np.cos(2 * np.pi * waves * t + offset)
    phase = 2 * np.pi * rng.uniform(4, 7) * t
    return _track(t, x=d * speed * t, y=y, facing=d, tilt=-0.35 * np.arctan(sink / speed), phase=phase,
                  stride=0.8, reach=0.5 + 0.5 * np.sin(phase))


def _keeping_still(t: np.ndarray, d: float, rng: np.random.Generator) -> Track:
    return _track(t, x=rng.normal(0, 0.002, t.shape), y=rng.normal(0, 0.002, t.shape), facing=d,
                  phase=rng.uniform(0, 2 * np.pi))


def _turning_around(t: np.ndarray, d: float, rng: np.random.Generator) -> Track:
    """Facing flips from d to -d (the body narrows through a front view), stepping on the spot."""
    duration = max(float(t[-1]), 1e-6)
    start, length = rng.uniform(0.1, 0.45) * duration, rng.uniform(0.3, 0.45) * duration
    s = np.clip((t - start) / length, 0.0, 1.0)
    s = s * s * (3 - 2 * s)
    turning = (s > 0) & (s < 1)
    return _track(t, x=rng.normal(0, 0.002, t.shape), y=rng.normal(0, 0.002, t.shape),
                  facing=d * np.cos(np.pi * s), phase=2 * np.pi * 4 * t, stride=np.where(turning, 0.4, 0.0))


_MOTIONS: dict[str, Callable[[np.ndarray, float, np.random.Generator], Track]] = {
    "Walking": _walking, "Running": _running, "Jumping": _jumping, "Flying": _flying,
    "Swimming": _swimming, "Keeping still": _keeping_still, "Turning Around": _turning_around,
}


def simulate_track(actions: Sequence[str], num_frames: int, rng: np.random.Generator) -> Track:
    """Poses over a clip; a second action starts near mid-clip from the first one's final state."""
    direction = float(rng.choice([-1.0, 1.0]))
    cuts = [0, num_frames]
    if len(actions) == 2:
        cuts.insert(1, int(round(rng.uniform(0.4, 0.6) * num_frames)))
    pieces: list[Track] = []
    for action, start, stop in zip(actions, cuts, cuts[1:]):
        piece = _MOTIONS[action](np.arange(stop - start) / (num_frames - 1), direction, rng)
        if pieces:
            piece = piece.shifted(pieces[-1].x[-1], pieces[-1].y[-1])
        direction = 1.0 if piece.facing[-1] >= 0 else -1.0
        pieces.append(piece)
    return Track(**{f.name: np.concatenate([getattr(p, f.name) for p in pieces]) for f in fields(Track)})


def _offset(low: float, high: float, lo_bound: float, hi_bound: float, rng: np.random.Generator) -> float:
    """A random shift putting [low, high] inside [lo_bound, hi_bound], centred if it cannot fit."""
    a, b = lo_bound - low, hi_bound - high
    return rng.uniform(a, b) if a <= b else (a + b) / 2


def place_track(track: Track, length: float, rng: np.random.Generator) -> Track:
    """Random placement keeping an animal of this body length in view: fliers in the upper part of
    the frame, the rest on the ground below."""
    margin = max(0.1, 0.5 * length)
    dx = _offset(track.x.min(), track.x.max(), margin, 1 - margin, rng)
    if track.flying.any():
        top = rng.uniform(0.1, 0.3)
        dy = min(top - track.y.min(), 0.8 - track.y.max())
    else:
        ground = rng.uniform(0.45, 0.75)
        dy = max(ground - track.y.max(), 0.1 - track.y.min())
    return track.shifted(dx, dy)


def place_apart(track: Track, length: float, other: Track, rng: np.random.Generator) -> Track:
    """The placement, among a few random ones, that keeps the animal farthest from another."""
    candidates = [place_track(track, length, rng) for _ in range(8)]
    return max(candidates, key=lambda c: float(np.hypot(c.x - other.x, c.y - other.y).mean()))


def sample_appearance(species: Species, rng: np.random.Generator) -> Appearance:
    """Colour variant with brightness and hue jitter, size jitter and a spot pattern."""
    colour_name, base = species.colours[rng.integers(len(species.colours))]
    jittered = np.array(base) * rng.uniform(0.85, 1.15) + rng.integers(-8, 9, 3)
    colour = tuple(int(c) for c in np.clip(jittered, 0, 255))
    k = int(rng.integers(4, 8))
    angle, radius = rng.uniform(0, 2 * np.pi, k), 0.7 * np.sqrt(rng.uniform(0, 1, k))
    spots = np.stack([radius * np.cos(angle), radius * np.sin(angle), rng.uniform(0.12, 0.22, k)], 1)
    return Appearance(species, colour, colour_name, species.length * rng.uniform(0.8, 1.25), spots)


# ---------------------------------------------------------------------------------------------
# Backgrounds


def _gradient(rng: np.random.Generator, top: tuple[RGB, RGB], bottom: tuple[RGB, RGB], px: int) -> np.ndarray:
    """Rows (px, 3) blending from a random colour within the top range to one within the bottom range."""
    w = np.linspace(0.0, 1.0, px)[:, None]
    return rng.uniform(*top) * (1 - w) + rng.uniform(*bottom) * w


def draw_background(rng: np.random.Generator, px: int) -> np.ndarray:
    """A static backdrop (float RGB, px×px): sky over ground, water with waves, or a plain gradient,
    with smooth blotches and pixel noise. Drawn independently of the animals' actions."""
    kind = rng.choice(["land", "water", "plain"])
    rows = np.arange(px)[:, None] / px
    if kind == "land":
        horizon = rng.uniform(0.45, 0.8)
        sky = _gradient(rng, ((120, 150, 180), (210, 225, 250)), ((190, 200, 200), (240, 240, 240)), px)
        ground = _gradient(rng, ((70, 90, 30), (190, 170, 110)), ((40, 60, 20), (130, 120, 80)), px)
        column = np.where(rows < horizon, sky, ground)
    elif kind == "water":
        surface = rng.uniform(0.0, 0.3)
        sky = _gradient(rng, ((150, 180, 200), (220, 235, 250)), ((180, 200, 210), (240, 245, 250)), px)
        water = _gradient(rng, ((40, 110, 140), (110, 180, 200)), ((10, 50, 80), (50, 110, 140)), px)
        column = np.where(rows < surface, sky, water)
    else:
        column = _gradient(rng, ((60, 60, 60), (220, 220, 220)), ((60, 60, 60), (220, 220, 220)), px)
    image = np.repeat(column[:, None, :], px, axis=1)
    if kind == "water":
        cols = np.arange(px)[None, :] / px
        ripple = 0.05 * np.sin(2 * np.pi * rng.uniform(1, 3) * cols)
        waves = np.sin(2 * np.pi * (rng.uniform(3, 8) * rows + ripple))
        image += np.where(rows >= surface, 14 * (waves > 0.85), 0)[..., None]
    coarse = Image.fromarray(rng.normal(0, 1, (6, 6)).astype(np.float32))
    blotches = np.asarray(coarse.resize((px, px), Image.BICUBIC))
    image += rng.uniform(4, 14) * blotches[..., None] + rng.normal(0, rng.uniform(1.5, 5), image.shape)
    return np.clip(image, 0, 255)


# ---------------------------------------------------------------------------------------------
# Animals: each drawn in its body frame (x forward, y down, unit = body length), facing right.

_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 24, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 24, endpoint=False))], 1)


def _shade(colour: RGB, factor: float) -> RGB:
    return tuple(int(min(255, c * factor)) for c in colour)


def _tint(colour: RGB, other: RGB, amount: float) -> RGB:
    return tuple(int(c * (1 - amount) + o * amount) for c, o in zip(colour, other))


class _Pen:
    """Maps body-frame shapes onto the canvas: mirror and squash by facing, tilt, scale, move."""

    def __init__(self, draw: ImageDraw.ImageDraw, pose: Pose, length_px: float, canvas_px: int):
        flip = 1.0 if pose.facing >= 0 else -1.0
        angle = -pose.tilt * flip
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        self._matrix = length_px * rotation @ np.diag([flip * max(abs(pose.facing), 0.2), 1.0])
        self._origin = np.array([pose.x, pose.y]) * canvas_px
        self._length_px = length_px
        self._draw = draw

    def _map(self, xy: np.ndarray) -> list[float]:
        return (np.asarray(xy, dtype=float) @ self._matrix.T + self._origin).ravel().tolist()

    def polygon(self, xy: Sequence[Sequence[float]], fill: RGB, outline: RGB | None = None) -> None:
        self._draw.polygon(self._map(xy), fill=fill, outline=outline)

    def ellipse(self, centre: Sequence[float], rx: float, ry: float, fill: RGB,
                outline: RGB | None = None, angle: float = 0.0) -> None:
        c, s = math.cos(angle), math.sin(angle)
        points = (_CIRCLE * [rx, ry]) @ np.array([[c, s], [-s, c]]) + centre
        self.polygon(points, fill, outline)

    def line(self, xy: Sequence[Sequence[float]], width: float, fill: RGB) -> None:
        self._draw.line(self._map(xy), fill=fill, width=max(1, round(width * self._length_px)), joint="curve")


def _leg(pen: _Pen, hip: tuple[float, float], length: float, angle: float, width: float, fill: RGB) -> None:
    """A straight leg from the hip; angle 0 points down, positive swings forward."""
    pen.line([hip, (hip[0] + length * math.sin(angle), hip[1] + length * math.cos(angle))], width, fill)


def _swing(pose: Pose, offset: float, amplitude: float = 0.5) -> float:
    return pose.stride * amplitude * math.sin(pose.phase + offset)


def _spots(pen: _Pen, app: Appearance, centre: tuple[float, float], rx: float, ry: float, fill: RGB) -> None:
    for u, v, r in app.spots:
        pen.ellipse((centre[0] + u * rx, centre[1] + v * ry), r * ry, r * ry, fill)


def _wing(pen: _Pen, pose: Pose, root: tuple[float, float], span: float, fill: RGB, outline: RGB) -> None:
    """Flapping wing (tip up or down with the phase) in flight, folded on the body otherwise."""
    x, y = root
    if pose.flying:
        tip = y - span * math.sin(pose.phase)
        pen.polygon([(x + 0.12, y), (x - 0.14, y), (x - 0.1, tip), (x + 0.02, tip * 0.9 + y * 0.1)], fill, outline)
    else:
        pen.ellipse((x - 0.03, y + 0.05), 0.19, 0.065, fill, outline, angle=-0.1)


def _draw_fox(pen: _Pen, app: Appearance, pose: Pose) -> None:
    body, dark = app.colour, _shade(app.colour, 0.55)
    white = (238, 236, 230)
    for x, offset in ((0.22, 0.0), (0.16, np.pi), (-0.2, np.pi), (-0.26, 0.0)):
        hind = x < 0
        angle = _swing(pose, offset) + (-1.2 if hind else 1.0) * pose.reach
        _leg(pen, (x, 0.08), 0.26, angle, 0.05, dark)
    pen.ellipse((-0.5, -0.04), 0.2, 0.075, body, dark, angle=0.3 + 0.1 * math.sin(pose.phase))
    pen.ellipse((-0.66, -0.1), 0.07, 0.05, white, angle=0.3)
    pen.ellipse((0.0, 0.0), 0.32, 0.13, body, dark)
    pen.polygon([(0.31, -0.18), (0.33, -0.31), (0.38, -0.19)], dark)
    pen.polygon([(0.37, -0.19), (0.42, -0.31), (0.44, -0.17)], dark)
    pen.ellipse((0.37, -0.12), 0.1, 0.09, body, dark)
    pen.polygon([(0.42, -0.16), (0.57, -0.08), (0.42, -0.05)], _tint(body, white, 0.5), dark)
    pen.ellipse((0.41, -0.14), 0.018, 0.018, (20, 20, 20))


def _draw_rabbit(pen: _Pen, app: Appearance, pose: Pose) -> None:
    body, dark = app.colour, _shade(app.colour, 0.6)
    white = (245, 243, 238)
    foot = -0.16 - 0.12 * pose.reach + 0.1 * _swing(pose, 0.0)
    pen.ellipse((foot, 0.18), 0.12, 0.045, body, dark)
    for x, offset in ((0.2, 0.0), (0.15, np.pi)):
        _leg(pen, (x, 0.1), 0.14, _swing(pose, offset) + 0.9 * pose.reach, 0.05, dark)
    pen.ellipse((0.0, 0.0), 0.27, 0.18, body, dark)
    pen.ellipse((-0.28, -0.06), 0.07, 0.07, white, dark)
    pen.ellipse((0.22, -0.37), 0.04, 0.14, body, dark, angle=-0.25 + 0.3 * pose.reach)
    pen.ellipse((0.3, -0.36), 0.04, 0.14, body, dark, angle=0.05 + 0.3 * pose.reach)
    pen.ellipse((0.28, -0.16), 0.12, 0.1, body, dark)
    pen.ellipse((0.33, -0.18), 0.02, 0.02, (20, 20, 20))


def _draw_crane(pen: _Pen, app: Appearance, pose: Pose) -> None:
    body, dark = app.colour, _shade(app.colour, 0.6)
    legs, black, red = (60, 60, 60), (25, 25, 25), (200, 30, 30)
    for x, offset in ((0.02, 0.0), (-0.04, np.pi)):
        angle = -1.35 if pose.flying else _swing(pose, offset, 0.6)
        _leg(pen, (x, 0.08), 0.5, angle, 0.025, legs)
    pen.ellipse((-0.27, 0.0), 0.11, 0.075, black)
    pen.ellipse((0.0, 0.0), 0.28, 0.12, body, dark)
    neck = (0.52, -0.1) if pose.flying else (0.33, -0.46)
    pen.line([(0.2, -0.04), neck], 0.05, body)
    pen.line([neck, (neck[0] + 0.13, neck[1] + 0.02)], 0.025, (90, 80, 60))
    pen.ellipse(neck, 0.045, 0.045, black)
    pen.ellipse((neck[0] - 0.005, neck[1] - 0.03), 0.025, 0.018, red)
    _wing(pen, pose, (0.0, -0.08), 0.45, dark, black)


def _draw_duck(pen: _Pen, app: Appearance, pose: Pose) -> None:
    body, dark = app.colour, _shade(app.colour, 0.6)
    orange = (235, 140, 30)
    if not pose.flying:
        for x, offset in ((0.04, 0.0), (-0.04, np.pi)):
            _leg(pen, (x, 0.12), 0.11, _swing(pose, offset) - 0.9 * pose.reach, 0.035, orange)
    pen.polygon([(-0.26, -0.05), (-0.42, -0.13), (-0.28, 0.05)], dark)
    pen.ellipse((0.0, 0.0), 0.3, 0.16, body, dark)
    pen.ellipse((0.22, -0.12), 0.065, 0.1, body)
    pen.ellipse((0.27, -0.21), 0.1, 0.095, _tint(dark, (30, 90, 50), 0.4), dark)
    pen.ellipse((0.39, -0.19), 0.075, 0.03, orange, dark)
    pen.ellipse((0.3, -0.23), 0.018, 0.018, (15, 15, 15))
    _wing(pen, pose, (-0.02, -0.06), 0.35, dark, _shade(dark, 0.7))


def _draw_frog(pen: _Pen, app: Appearance, pose: Pose) -> None:
    body, dark = app.colour, _shade(app.colour, 0.55)
    belly = _tint(body, (240, 230, 160), 0.5)
    r = pose.reach
    for dx in (0.0, 0.04):
        hip = (-0.16 + dx, 0.08)
        knee = (hip[0] + 0.26 - 0.5 * r, hip[1] + 0.1 - 0.06 * r)
        foot = (knee[0] - 0.22 - 0.08 * r, knee[1] + 0.06 - 0.04 * r)
        pen.line([hip, knee, foot], 0.065, dark)
        _leg(pen, (0.14 + dx, 0.1), 0.14, 0.3 + 0.6 * r, 0.045, dark)
    pen.ellipse((0.0, 0.0), 0.28, 0.2, body, dark, angle=-0.15)
    pen.ellipse((0.05, 0.09), 0.18, 0.08, belly, angle=-0.15)
    _spots(pen, app, (-0.03, -0.02), 0.24, 0.16, dark)
    for x, y in ((0.1, -0.19), (0.19, -0.17)):
        pen.ellipse((x, y), 0.06, 0.06, body, dark)
        pen.ellipse((x + 0.01, y - 0.005), 0.03, 0.03, (15, 15, 15))


def _draw_clownfish(pen: _Pen, app: Appearance, pose: Pose) -> None:
    body, dark = app.colour, _shade(app.colour, 0.5)
    white, black = (250, 250, 250), (20, 20, 20)
    wag = _swing(pose, 0.0, 0.5)
    c, s = math.cos(wag), math.sin(wag)
    fin = np.array([(0.0, 0.0), (-0.24, -0.17), (-0.19, 0.0), (-0.24, 0.17)]) @ np.array([[c, s], [-s, c]])
    pen.polygon(fin + (-0.27, 0.0), body, black)
    pen.polygon([(-0.12, -0.14), (0.04, -0.27), (0.15, -0.13)], body, black)
    pen.ellipse((0.0, 0.0), 0.32, 0.17, body, black)
    for x in (0.17, -0.03, -0.22):
        half = 0.17 * math.sqrt(max(0.0, 1 - (x / 0.32) ** 2))
        pen.polygon([(x - 0.035, -half), (x + 0.035, -half), (x + 0.035, half), (x - 0.035, half)], white, black)
    pen.ellipse((0.04, 0.07), 0.07, 0.035, dark, angle=0.4 + 0.4 * math.sin(pose.phase))
    pen.ellipse((0.23, -0.04), 0.035, 0.035, white)
    pen.ellipse((0.24, -0.04), 0.018, 0.018, black)


def _draw_gecko(pen: _Pen, app: Appearance, pose: Pose) -> None:
    body, dark = app.colour, _shade(app.colour, 0.55)
    for x, offset in ((0.15, 0.0), (0.11, np.pi), (-0.15, np.pi), (-0.19, 0.0)):
        angle = 0.7 * (1 if x > 0 else -1) * 0.6 + _swing(pose, offset, 0.7)
        _leg(pen, (x, 0.03), 0.12, angle, 0.035, dark)
    xs = np.linspace(-0.2, -0.72, 7)
    centre = 0.05 * np.sin(pose.phase + 6 * xs) * (xs + 0.2) / -0.52
    half = 0.055 * (xs + 0.74) / 0.54
    pen.polygon(np.concatenate([np.stack([xs, centre - half], 1), np.stack([xs, centre + half], 1)[::-1]]), body, dark)
    pen.ellipse((0.0, 0.0), 0.24, 0.075, body, dark)
    pen.ellipse((0.31, -0.005), 0.1, 0.065, body, dark)
    _spots(pen, app, (0.0, 0.0), 0.22, 0.065, dark)
    pen.ellipse((0.34, -0.03), 0.02, 0.02, (15, 15, 15))


_DRAW: dict[str, Callable[[_Pen, Appearance, Pose], None]] = {
    "Clownfish": _draw_clownfish, "Common Crane": _draw_crane, "Duck": _draw_duck, "Fox": _draw_fox,
    "Frog": _draw_frog, "Gecko": _draw_gecko, "Rabbit": _draw_rabbit,
}


def render_frame(background: Image.Image, animals: Sequence[tuple[Appearance, Pose]], size: int) -> np.ndarray:
    """One RGB frame (size×size uint8): animals drawn over the (supersampled) background, farthest
    (highest in the frame) first."""
    canvas = background.copy()
    draw = ImageDraw.Draw(canvas)
    for app, pose in sorted(animals, key=lambda a: a[1].y):
        _DRAW[app.species.name](_Pen(draw, pose, app.length * canvas.width, canvas.width), app, pose)
    return np.asarray(canvas.reduce(SUPERSAMPLE))


def background_image(rng: np.random.Generator, size: int) -> Image.Image:
    return Image.fromarray(draw_background(rng, size * SUPERSAMPLE).astype(np.uint8))


def render_clip(plan: ClipPlan, rng: np.random.Generator, size: int, num_frames: int) -> np.ndarray:
    """Frames (num_frames, size, size, 3) uint8 of one clip: a fixed camera on a static backdrop."""
    background = background_image(rng, size)
    animals: list[tuple[Appearance, Track]] = []
    for animal in plan:
        appearance = sample_appearance(animal.species, rng)
        track = simulate_track(animal.actions, num_frames, rng)
        if animals:
            track = place_apart(track, appearance.length, animals[0][1], rng)
        else:
            track = place_track(track, appearance.length, rng)
        animals.append((appearance, track))
    return np.stack([render_frame(background, [(a, t.pose(i)) for a, t in animals], size)
                     for i in range(num_frames)])


# ---------------------------------------------------------------------------------------------
# Captions


def _third(v: float, words: tuple[str, str, str]) -> str:
    return words[0] if v < 1 / 3 else words[2] if v > 2 / 3 else words[1]


def _pose_words(species: Species, pose: Pose) -> list[str]:
    """What a still frame shows of the motion: wings, legs or tail, lift-off, tilt."""
    words: list[str] = []
    if pose.flying:
        words.append("wings up" if math.sin(pose.phase) > 0 else "wings down")
    elif pose.airborne:
        words.append("in mid-air")
    if species.name == "Clownfish":
        words.append("tail bent" if abs(_swing(pose, 0.0)) > 0.2 else "tail straight")
    elif not pose.flying:
        if species.name in ("Common Crane", "Duck"):
            words.append("wings folded")
        if pose.reach > 0.5:
            words.append("legs extended")
        elif abs(_swing(pose, 0.0)) > 0.25:
            words.append("legs apart")
        else:
            words.append("legs tucked")
    if pose.tilt > 0.2:
        words.append("nose up")
    elif pose.tilt < -0.2:
        words.append("nose down")
    return words


def caption(app: Appearance, pose: Pose) -> str:
    """E.g. 'a small green frog at the bottom left, facing right, in mid-air, legs extended'."""
    size = "small" if app.length < 0.26 else "large" if app.length > 0.36 else "medium"
    where = f"{_third(pose.y, ('top', 'middle', 'bottom'))} {_third(pose.x, ('left', 'centre', 'right'))}"
    facing = "right" if pose.facing > 0.35 else "left" if pose.facing < -0.35 else "the viewer"
    parts = [f"a {size} {app.colour_name} {app.species.name.lower()} at the {where}", f"facing {facing}"]
    return ", ".join(parts + _pose_words(app.species, pose))


def weighted_choice(rng: np.random.Generator, items: Sequence[T], weights: Sequence[float]) -> T:
    """One item drawn with probability proportional to its weight."""
    p = np.asarray(weights, dtype=float)
    return items[int(rng.choice(len(items), p=p / p.sum()))]


def sample_action(species: Species, rng: np.random.Generator) -> str:
    return weighted_choice(rng, species.actions, [ACTION_WEIGHT[a] for a in species.actions])


def render_captioned_frames(n: int, *, size: int = 64, seed: int) -> tuple[np.ndarray, list[str]]:
    """n single frames (n, size, size, 3) uint8 of random scene states, each with a caption naming
    species, colour, size, position, facing and pose: pretraining pairs for the tiny CLIP."""
    rng = np.random.default_rng(seed)
    images, captions = np.empty((n, size, size, 3), np.uint8), []
    for k in range(n):
        species = weighted_choice(rng, SPECIES, [s.weight for s in SPECIES])
        appearance = sample_appearance(species, rng)
        track = place_track(simulate_track([sample_action(species, rng)], 16, rng), appearance.length, rng)
        pose = track.pose(int(rng.integers(16)))
        images[k] = render_frame(background_image(rng, size), [(appearance, pose)], size)
        captions.append(caption(appearance, pose))
    return images, captions
