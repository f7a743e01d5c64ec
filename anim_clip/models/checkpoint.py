"""Checkpoint files in our own format, read through :mod:`anim_clip.models.untrusted` like any
checkpoint file. Building a model from a checkpoint is :mod:`anim_clip.models.factory`'s job; this
module knows no model class.

Our format (``anim-clip/1``, one ``torch.save`` dict, written atomically)::

    {"format": "anim-clip/1", "kind": "head" | "e2e", "config": config_to_dict(cfg),
     "head": {"embed_dim", "num_frames", "patch_width", "gcn_hidden"},
     "inputs": {"species": "annotated" | "predictor" | "zero-shot" | "none", "patches": bool},
     "model": state_dict, "vocab": {"actions": [...], "species": [...]} | None, ...extra}

``inputs`` is the head's :class:`~anim_clip.models.inputs.HeadInputs`. Files written before it was
stored carry ``external_species`` among the head's dims instead; their inputs are derived from their
config, as the run that wrote them derived them. A head's state dict holds its vocabulary (text
embeddings, graph) when it has one, so a checkpoint predicts without the dataset's text cache.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import torch
from torch import Tensor, nn

from anim_clip.config import Config, config_from_dict, config_to_dict
from anim_clip.errors import AnimClipError
from anim_clip.io import atomic_write
from anim_clip.models.inputs import HeadInputs
from anim_clip.models.untrusted import load_untrusted

FORMAT = "anim-clip/1"
_RESERVED = ("format", "kind", "config", "head", "inputs", "model", "vocab")
LEGACY_DIMS = ("external_species",)  # head dims of files written before ``inputs`` was stored


def load_state_strict(module: nn.Module, state: Mapping[str, Tensor], source: str | Path) -> None:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped key."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:
        shapes = re.findall(r"size mismatch for ([^:]+):", str(e))
        raise AnimClipError(
            f"{source}: weights do not fit the model (shape differs for {', '.join(shapes[:5])})"
        ) from None
    problems = [f"missing {', '.join(result.missing_keys[:5])}"] if result.missing_keys else []
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:5])}")
    if problems:
        raise AnimClipError(f"{source}: weights do not match the model: {'; '.join(problems)}")


@dataclass
class Checkpoint:
    """A loaded ``anim-clip/1`` file."""

    path: Path
    kind: Literal["head", "e2e"]
    config: Config
    head_dims: dict[str, Any]
    inputs: HeadInputs
    model: dict[str, Tensor]
    vocab: dict[str, list[str]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def head_state(self) -> dict[str, Tensor]:
        if self.kind == "head":
            return self.model
        return {k.removeprefix("head."): v for k, v in self.model.items() if k.startswith("head.")}


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    cfg: Config,
    *,
    vocab: dict[str, list[str]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a head, or the end-to-end model holding one as ``model.head``) atomically;
    ``extra`` adds top-level entries (epoch, metrics, optimiser state: plain data and tensors only)."""
    clash = sorted(set(extra or {}) & set(_RESERVED))
    if clash:
        raise ValueError(f"extra entries may not replace {clash}")
    head = getattr(model, "head", model)
    payload = {
        "format": FORMAT,
        "kind": "head" if head is model else "e2e",
        "config": config_to_dict(dataclasses.replace(cfg, model=head.cfg)),
        "head": dict(head.dims),
        "inputs": head.inputs.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "vocab": vocab,
        **(extra or {}),
    }
    return atomic_write(path, lambda tmp: torch_save(payload, tmp))


class _WriteErrors:
    """A file for ``torch.save`` that keeps what cut a write short: the ``OSError`` of a failed write
    (disk full), or the ``KeyboardInterrupt`` of Ctrl-C or SIGTERM arriving in it. torch's writer turns
    either into ``RuntimeError: unexpected pos 238144 vs 238032``, which would hide the disk's reason,
    or turn an interruption into a traceback."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except (OSError, KeyboardInterrupt) as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self.file.flush()
        except (OSError, KeyboardInterrupt) as e:
            self.error = e
            raise


def save_into(obj: Any, file: BinaryIO) -> None:
    """``torch.save(obj, file)``; a write that fails raises its ``OSError`` (ENOSPC, EDQUOT, ...), one
    interrupted raises its ``KeyboardInterrupt``."""
    writer = _WriteErrors(file)
    try:
        torch.save(obj, writer)
    except RuntimeError:
        if writer.error is None:
            raise
        raise writer.error from None


def torch_save(obj: Any, path: Path) -> None:
    """:func:`save_into` a new file at ``path``."""
    with open(path, "wb") as f:
        save_into(obj, f)


def load_checkpoint(path: str | Path) -> Checkpoint:
    obj = load_untrusted(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and any(
            k.removeprefix("module.").startswith("prompts_generator1.") for k in obj["model"]
        ):
            raise AnimClipError(
                f"{path}: an Animal-CLIP release checkpoint; convert it first (anim-clip convert-release)"
            )
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise AnimClipError(f"{path}: not an anim-clip checkpoint (format {found!r}, expected {FORMAT!r})")
    try:
        config = config_from_dict(obj["config"])
        stored = obj.get("inputs")
        return Checkpoint(
            path=Path(path),
            kind=obj["kind"],
            config=config,
            head_dims={k: v for k, v in obj["head"].items() if k not in LEGACY_DIMS},
            inputs=HeadInputs.of_config(config) if stored is None else HeadInputs.from_dict(stored),
            model=obj["model"],
            vocab=obj.get("vocab"),
            extra={k: v for k, v in obj.items() if k not in _RESERVED},
        )
    except (KeyError, AnimClipError) as e:
        raise AnimClipError(f"{path}: damaged anim-clip checkpoint: {e}") from None
