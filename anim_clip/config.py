"""Typed run configuration: dataclasses, YAML files, dotted overrides, validation.

A config is built from (1) the dataclass defaults, (2) a YAML file (a path, or the name of a
file shipped in ``anim_clip/configs``), (3) ``--set section.key=value`` overrides, in that order.
Every value is checked against its field's type and allowed range (``ranged``, one place:
``_in_range``), NaN and inf are refused, and an unknown key is reported with the closest
known one; a renamed key (``RENAMED``) is still read under its old name, said once. The resolved
config is saved beside every result so a run can be reproduced.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from anim_clip.errors import ConfigError
from anim_clip.io import atomic_write_text
from anim_clip.ui import console

CONFIG_DIR = Path(__file__).parent / "configs"
Triple = tuple[float, float, float]
Decoder = Literal["decord", "pyav", "torchcodec", "torchcodec-cuda"]  # torchcodec-cuda: NVDEC on the GPU
TrainMode = Literal["cached", "e2e"]
TestCrops = Literal[1, 3]  # spatial views per test clip: the centre, or the centre and both ends


@dataclass(frozen=True)
class Range:
    """The numbers a setting allows (each of a tuple's); a bound is kept unless ``open_*``."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below

    def __str__(self) -> str:
        low = None if self.low is None else f"{'>' if self.open_low else '>='} {self.low}"
        high = None if self.high is None else f"{'<' if self.open_high else '<='} {self.high}"
        return " and ".join(b for b in (low, high) if b)


def ranged(default: Any, **bounds: Any) -> Any:
    """A dataclass field whose value(s) must lie in ``Range(**bounds)``, checked as the config loads."""
    return field(default=default, metadata={"range": Range(**bounds)})


@dataclass
class DataConfig:
    """Which dataset, where its videos are, and which knowledge files describe its classes."""

    name: str = "demo"  # free text, recorded in caches and reports
    format: Literal["ak", "mammalnet", "lote", "csv"] = "ak"  # which reader parses the lists
    root: str | None = None  # folder the split files' video paths are relative to
    allow_outside_root: bool = False  # accept absolute paths and ../ in split files (refused by default)
    annotations: str | None = None  # folder of label/species/relation/split files; None = shipped copy
    # file names inside `annotations`; None = the format's usual name (csv: derived from the lists)
    labels: str | None = None
    species: str | None = None
    relation: str | None = None
    train: str | None = None
    test: str | None = None
    graph: Literal["release", "train"] = "train"  # release file, or rebuilt from the train split (D6)
    descriptions: str | None = None  # action descriptions (release CSV or our id,name,description CSV)
    species_descriptions: str | None = None
    split_sentences: bool = False  # split long descriptions into sentence pieces that fit the text context
    unseen_species: list[str] = field(default_factory=list)  # held out of training, reported alone


@dataclass
class SamplingConfig:
    """How frames are taken from a video and turned into model input (docs/method.md §4.4, §4.5)."""

    num_frames: int = ranged(8, low=1)
    decoder: Decoder = "decord"
    decode_threads: int = ranged(1, low=1)
    image_size: int = ranged(224, low=1)
    resize: int = ranged(256, low=1)  # short side before cropping (train, 1-crop test)
    # model = the backbone's own statistics; clip, imagenet (the release's, D5) or [[mean x3], [std x3]] override them
    normalization: Literal["model", "clip", "imagenet"] | tuple[Triple, Triple] = "model"
    interpolation: Literal["model", "bilinear", "bicubic"] = "model"  # resizing; model = the backbone's own
    train_views: int = ranged(4, low=1)  # augmented views cached per training clip
    test_clips: int = ranged(1, low=1)  # temporal views per test clip
    test_crops: TestCrops = 1


@dataclass
class BackboneConfig:
    """The open_clip model whose image tower encodes frames."""

    model: str = "ViT-B-16"  # an open_clip model name, hf-hub:org/repo or local-dir:/path (these bring their weights)
    pretrained: str | None = "openai"  # for a name: open_clip tag, a local checkpoint file, or None (random)
    quick_gelu: bool = True  # force QuickGELU (the OpenAI weights need it); false = the model config's activation
    patches: Literal["none", "fp16"] = "none"  # store patch tokens in the cache
    batch_frames: int = ranged(256, low=1)  # frames per forward pass during extraction
    compile: bool = False


@dataclass
class RuntimeConfig:
    """How every command runs its models, whichever they are: the tower, the head, the species predictor."""

    # the one precision policy (anim_clip.runtime.precision); auto: bf16 on GPUs, and for the head on CPUs with bf16 units
    precision: Literal["auto", "fp32", "bf16"] = "auto"


@dataclass
class SpeciesConfig:
    """A separate zero-shot species predictor (BioCLIP, say) for ``model.species_source=predicted``
    (docs/method.md §2.5, D1): phase one caches its species probabilities, the head conditions on them."""

    model: str | None = None  # an open_clip model as backbone.model takes; null: none (the head's own zero-shot)
    pretrained: str | None = None  # for a model name: as backbone.pretrained (hf-hub: and local-dir: bring theirs)
    template: str = "a photo of {}."  # the text each species name is put in ({} = the name)


@dataclass
class ModelConfig:
    """The Animal-CLIP head; defaults reproduce the release (docs/method.md Appendix C)."""

    mit_layers: int = ranged(1, low=0)  # 0: a plain mean over frames
    prompt_layers: int = ranged(3, low=0)
    prompts_alpha: float = ranged(0.1, low=0)
    refine: bool = True  # the species-action graph refinement of the text features
    refine_graph: Literal["release", "normalized"] = "release"  # normalized = sym. norm + residual
    text_prompt: bool = True  # category-specific prompt on the text side
    video_prompt: bool = True  # category-specific prompt on the video side
    pooling: Literal["max", "mean"] = "max"  # over the K descriptions of a class
    species_source: Literal["oracle", "predicted", "none"] = "oracle"
    video_specific_prompt: bool = False  # X-CLIP's prompt from time-averaged patch tokens
    logit_scale: float = ranged(100.0, low=0, open_low=True)


@dataclass
class TrainConfig:
    """Optimisation; defaults are the release's recipe (docs/method.md §6)."""

    mode: TrainMode = "cached"
    epochs: int = ranged(30, low=1)
    batch_size: int = ranged(16, low=1)
    accumulation: int = ranged(4, low=1)
    # a small training set trains in smaller batches to take this many steps an epoch
    min_steps_per_epoch: int = ranged(1, low=1)
    lr: float = ranged(8e-6, low=0)  # backbone (e2e mode)
    head_lr: float = ranged(8e-5, low=0)  # message tokens, MIT, prompts, graph (0: kept as loaded, e2e)
    min_lr: float = ranged(8e-8, low=0)
    warmup_epochs: float = ranged(5.0, low=0)
    weight_decay: float = ranged(1e-3, low=0)
    betas: tuple[float, float] = ranged((0.9, 0.98), low=0, high=1, open_high=True)  # each
    eps: float = ranged(1e-8, low=0, open_low=True)
    loss: Literal["ce", "bce", "ce_norm", "asl"] = "ce"
    mixup_alpha: float = ranged(0.8, low=0)  # 0: off
    cutmix_alpha: float = ranged(1.0, low=0)  # 0: off
    mix_species: bool = True  # mix the species vector with the same lambda (D7)
    grad_clip: float | None = ranged(None, low=0, open_low=True)
    grad_checkpointing: bool = False
    seed: int = ranged(1024, low=0, high=2**32 - 1)
    deterministic: bool = False
    num_workers: int = ranged(4, low=0)  # 0: decode in the main process
    # hold out this share of training clips for per-epoch selection (best.pt)
    val_fraction: float = ranged(0.0, low=0, high=1, open_high=True)
    log_every: int = ranged(20, low=1)  # optimiser steps between lines of metrics.jsonl


@dataclass
class EvalConfig:
    """How scores are formed and which metrics are reported (docs/method.md §5)."""

    scores: Literal["softmax", "sigmoid"] = "softmax"
    batch_size: int = ranged(64, low=1)
    long_tail: bool = True  # head / middle / tail metrics by training frequency
    head_min: int = ranged(500, low=0)  # head classes have more training clips than this (AK: 500)
    tail_max: int = ranged(100, low=0)  # tail classes have fewer (AK: 100)
    inconsistency: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    species: SpeciesConfig = field(default_factory=SpeciesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


_TRUE = {"true", "on", "yes", "1"}
_FALSE = {"false", "off", "no", "0"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert the few safe cases (int->float, on/off)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as e:  # a list's error comes from the list option, a name's from the names
                same_shape = (typing.get_origin(option) in (list, tuple)) == isinstance(value, (list, tuple))
                errors.insert(0 if same_shape else len(errors), str(e))
        raise ConfigError(errors[0] if errors else f"'{key}': cannot be null")
    if origin is Literal:
        if isinstance(value, str) and value not in args and any(isinstance(a, int) for a in args):
            try:
                value = int(value)
            except ValueError:
                pass
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"'{key}': {value!r} is not one of {choices}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}': expected a list, got {value!r}")
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"'{key}': expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        return [_coerce(v, args[0], key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"'{key}': expected true/false (or on/off), got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}': expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"'{key}': expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"'{key}': expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"'{key}': unsupported type {tp!r}")  # a programming error, kept loud


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(key: str) -> ConfigError:
    """Name the closest known key, or else the keys of the section (or the sections) there are."""
    sections = _fields(Config)
    section, _, name = key.partition(".")
    if section in sections:
        close = [f"{section}.{k}" for k in difflib.get_close_matches(name, list(_fields(sections[section])), n=1)]
    else:
        known = [f"{s}.{k}" for s, cls in sections.items() for k in _fields(cls)]
        close = difflib.get_close_matches(key, known, n=1)
    if close:
        hint = f"did you mean '{close[0]}'?"
    elif section in sections:
        hint = f"'{section}' has: {', '.join(_fields(sections[section]))}"
    else:
        hint = f"sections are: {', '.join(sections)}"
    return ConfigError(f"unknown key '{key}'; {hint}")


def _in_range(value: Any, section: type, name: str, key: str) -> Any:
    """``value`` if each of its numbers lies in the field's :class:`Range` (if it has one)."""
    bounds = next(f for f in dataclasses.fields(section) if f.name == name).metadata.get("range")
    numbers = value if isinstance(value, tuple) else (value,)
    if bounds is not None and any(v is not None and v not in bounds for v in numbers):
        which = "each" if isinstance(value, tuple) else "it"
        raise ConfigError(f"'{key}': {value!r} is out of range; {which} must be {bounds}")
    return value


# Renamed keys, old -> new: a config still naming an old one (a YAML file, --set, the config saved in a
# checkpoint) loads, said in one line. A later rename adds its line here.
RENAMED = {"backbone.precision": "runtime.precision"}


def _current(key: str) -> str:
    """``key``'s name now, saying so when the config used an old one (:data:`RENAMED`)."""
    new = RENAMED.get(key)
    if new is None:
        return key
    say_renamed(key, new)
    return new


@functools.cache
def say_renamed(old: str, new: str) -> None:
    """One line, once per process: a sweep or a command reading several configs says it once."""
    console.print(f"[yellow]{old} is deprecated; use {new}[/]", soft_wrap=True, highlight=False)


def _apply(cfg: Config, key: str, value: Any) -> None:
    """Set ``section.key`` on ``cfg`` after validating the value against the field's type and range;
    every key a config is read with passes here, old names included."""
    key = _current(key)
    parts = key.split(".")
    sections = _fields(Config)
    if len(parts) != 2 or parts[0] not in sections or parts[1] not in _fields(sections[parts[0]]):
        raise _unknown(key)
    section = getattr(cfg, parts[0])
    value = _coerce(value, _fields(type(section))[parts[1]], key)
    setattr(section, parts[1], _in_range(value, type(section), parts[1], key))


# (smaller, larger): settings that only make sense in this order
_ORDERED = (("sampling.image_size", "sampling.resize"), ("eval.tail_max", "eval.head_min"))


def _check_order(cfg: Config) -> Config:
    """Refuse pairs of settings that contradict each other (a crop larger than the resized frame)."""
    for small, large in _ORDERED:
        a, b = (getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in (small, large))
        if a > b:
            raise ConfigError(f"'{small}' ({a}) must not exceed '{large}' ({b}); change one of them")
    return cfg


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or the name of a shipped config (``ak``, ``demo``, ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"{name_or_path}: no such config file; shipped configs are: {', '.join(shipped_configs())}")


def shipped_configs() -> list[str]:
    """The names of the configs shipped in the package (``anim_clip/configs``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _flatten(tree: dict[str, Any], path: Path) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, values in tree.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section '{section}' must be a mapping")
        for k, v in values.items():
            flat[f"{section}.{k}"] = v
    return flat


def parse_override(text: str) -> tuple[str, Any]:
    """``train.lr=1e-4`` -> ('train.lr', 0.0001); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}': expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Flat ``section.key -> value`` of a YAML file, after the file it ``extends`` (if any)."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}".splitlines()[0]) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data:, model:, ...)")
    base = tree.pop("extends", None)
    flat: dict[str, Any] = {}
    if base is not None:
        base_path = path.parent / f"{base}" if (path.parent / f"{base}").is_file() else resolve_config_path(base)
        flat.update(_read_yaml(base_path, seen + (path.resolve(),)))
    flat.update(_flatten(tree, path))
    return flat


def load_config(name_or_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a validated Config from defaults, an optional YAML file and dotted overrides.

    A YAML file may start with ``extends: <config name or path>`` to change a few values of another.
    """
    cfg = Config()
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        for key, value in _read_yaml(path).items():
            try:
                _apply(cfg, key, value)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
    parsed = [parse_override(text) for text in overrides]
    given = {key for key, _ in parsed}
    for old, new in RENAMED.items():
        if old in given and new in given:  # which one won would depend on their order
            raise ConfigError(f"--set {old} and --set {new} name the same setting ({old} is its deprecated name): "
                              f"keep --set {new}")
    for key, value in parsed:
        _apply(cfg, key, value)
    return _check_order(cfg)


def _lists(value: Any) -> Any:
    return [_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Plain nested dict (tuples as lists, nested ones too) for YAML/JSON."""
    return {name: {k: _lists(v) for k, v in section.items()} for name, section in dataclasses.asdict(cfg).items()}


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Inverse of :func:`config_to_dict`, with the same validation as a YAML file."""
    cfg = Config()
    for key, value in _flatten(tree, Path("<saved config>")).items():
        _apply(cfg, key, value)
    return _check_order(cfg)


def config_changes(old: Config, new: Config) -> dict[str, list[Any]]:
    """``{"section.key": [old value, new value]}`` for every value that differs."""
    before, after = (_flatten(config_to_dict(c), Path("<config>")) for c in (old, new))
    return {k: [before[k], after[k]] for k in after if before[k] != after[k]}


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
