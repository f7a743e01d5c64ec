"""Checkpoints: our own format, and safe reading of any checkpoint file.

A checkpoint is untrusted input (a pickle can run code), so every file is read with
``torch.load(weights_only=True)``. The only non-plain object allowed is the yacs ``CfgNode``
that the release's files carry as their config: it is read as an inert ``OrderedDict``. A file
needing anything else is refused with one line naming it.

Our format (``anim-clip/1``, one ``torch.save`` dict, written atomically)::

    {"format": "anim-clip/1", "kind": "head" | "e2e", "config": config_to_dict(cfg),
     "head": {"embed_dim", "num_frames", "patch_width", "gcn_hidden", "external_species"}, "model": state_dict,
     "vocab": {"actions": [...], "species": [...]} | None, ...extra}

A head's state dict holds its vocabulary (text embeddings, graph) when it has one, so a
checkpoint predicts without the dataset's text cache.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import torch
from torch import Tensor, nn

from anim_clip.config import Config, config_from_dict, config_to_dict
from anim_clip.errors import AnimClipError
from anim_clip.io import atomic_write
from anim_clip.models.animal_clip import CUSTOM, AnimalCLIP, CrossFrameTower, clip_from_state_dict
from anim_clip.models.backbone import FrozenImageTower, create_clip
from anim_clip.models.factory import end_to_end
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.ui import console

FORMAT = "anim-clip/1"
_RESERVED = ("format", "kind", "config", "head", "model", "vocab")


def load_untrusted(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; yacs configs become ``OrderedDict``."""
    path = Path(path)
    if not path.is_file():
        raise AnimClipError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals([(OrderedDict, "yacs.config.CfgNode")]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # unreadable: the command line names the file and the system's reason
    except Exception as e:  # torch raises many types for a damaged or hostile file
        raise load_refusal(path, e) from None


def load_refusal(path: str | Path, error: Exception) -> AnimClipError:
    """One line in our own words for a checkpoint ``torch.load(weights_only=True)`` would not read.

    torch's own message advises retrying with ``weights_only=False``, which would run whatever
    code the file holds; it is never passed on.
    """
    if Path(path).stat().st_size == 0:
        return AnimClipError(f"{path}: empty file (0 bytes), not a checkpoint; was its copy or save cut short?")
    text = str(error)
    if not isinstance(error, pickle.UnpicklingError):
        reason = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
        return AnimClipError(f"{path}: not a readable PyTorch checkpoint ({reason})")
    wanted = re.search(r"GLOBAL ([\w.]+)", text)
    if wanted is None:
        operand = re.search(r"Unsupported operand \d+", text)
        reason = operand.group(0).lower() if operand else "a pickle the safe loader cannot read"
        return AnimClipError(f"{path}: not a readable PyTorch checkpoint ({reason})")
    return AnimClipError(f"{path}: refused to load: unpickling it would call or build {wanted.group(1)}, not only "
                         "tensors and plain data; checkpoints are read with torch.load(weights_only=True) and "
                         "never unpickled unsafely")


def plain(obj: Any) -> Any:
    """Nested ``OrderedDict`` (e.g. a release yacs config) -> plain dicts and lists."""
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


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
    model: dict[str, Tensor]
    vocab: dict[str, list[str]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def head_state(self) -> dict[str, Tensor]:
        if self.kind == "head":
            return self.model
        return {k.removeprefix("head."): v for k, v in self.model.items() if k.startswith("head.")}


def save_checkpoint(
    path: str | Path,
    model: AnimalCLIPHead | AnimalCLIP,
    cfg: Config,
    *,
    vocab: dict[str, list[str]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a head or the end-to-end model) atomically; ``extra`` adds top-level
    entries (epoch, metrics, optimiser state: plain data and tensors only)."""
    clash = sorted(set(extra or {}) & set(_RESERVED))
    if clash:
        raise ValueError(f"extra entries may not replace {clash}")
    head = model.head if isinstance(model, AnimalCLIP) else model
    payload = {
        "format": FORMAT,
        "kind": "e2e" if isinstance(model, AnimalCLIP) else "head",
        "config": config_to_dict(dataclasses.replace(cfg, model=head.cfg)),
        "head": dict(head.dims),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "vocab": vocab,
        **(extra or {}),
    }
    return atomic_write(path, lambda tmp: torch_save(payload, tmp))


class _WriteErrors:
    """A file for ``torch.save`` that keeps the ``OSError`` of a failed write (disk full), which
    torch would report only as ``unexpected pos 238144 vs 238032``."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def torch_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)``; a failed write raises its ``OSError`` (ENOSPC, EDQUOT, ...)."""
    with open(path, "wb") as f:
        writer = _WriteErrors(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is None:
                raise
            raise writer.error from None


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
        return Checkpoint(
            path=Path(path),
            kind=obj["kind"],
            config=config,
            head_dims=obj["head"],
            model=obj["model"],
            vocab=obj.get("vocab"),
            extra={k: v for k, v in obj.items() if k not in _RESERVED},
        )
    except (KeyError, AnimClipError) as e:
        raise AnimClipError(f"{path}: damaged anim-clip checkpoint: {e}") from None


def model_from_checkpoint(
    ckpt: Checkpoint, mode: Literal["cached", "e2e"] | None = None, *, load_pretrained: bool = True
) -> AnimalCLIPHead | AnimalCLIP:
    """The model in ``mode`` (default: the checkpoint's kind). An end-to-end checkpoint gives its
    head for cached mode; a head checkpoint goes end to end on ``config.backbone`` (its
    pretrained weights unless ``load_pretrained=False``) with fresh message tokens."""
    mode = mode or ("e2e" if ckpt.kind == "e2e" else "cached")
    head_state = ckpt.head_state()
    head = AnimalCLIPHead(ckpt.config.model, **ckpt.head_dims)
    if "vocab.action_text" in head_state:
        head.set_vocabulary(
            head_state["vocab.action_text"], head_state["vocab.species_text"], head_state["vocab.graph.adjacency"]
        )
    if mode == "cached" or ckpt.kind == "head":
        load_state_strict(head, head_state, ckpt.path)
        if mode == "cached":
            return head
        return end_to_end(ckpt.config, head, load_pretrained=load_pretrained)
    model = AnimalCLIP(checkpoint_clip(ckpt), head)
    load_state_strict(model, ckpt.model, ckpt.path)
    return model


def checkpoint_clip(ckpt: Checkpoint) -> nn.Module:
    """The open_clip model an end-to-end checkpoint's weights load into: its backbone as recorded,
    rebuilt without weights (the same architecture, activation and preprocessing), or for a
    converted release checkpoint of no open_clip architecture, read from the state dict's shapes."""
    backbone = ckpt.config.backbone
    if backbone.model == CUSTOM:
        return clip_from_state_dict(ckpt.model, quick_gelu=backbone.quick_gelu)
    return create_clip(backbone, load_weights=False)[0]


def head_and_tower(ckpt: Checkpoint) -> tuple[AnimalCLIPHead, nn.Module, str]:
    """The checkpoint's head, the image tower that feeds it (the model's own cross-frame tower end
    to end; the frozen open_clip tower of ``config.backbone`` for a head) and where the tower's
    weights came from."""
    if ckpt.kind == "e2e":
        model = model_from_checkpoint(ckpt)
        tower = CrossFrameTower(model, model.head.dims["num_frames"], model.head.video_specific_prompt is not None)
        return model.head, tower, "checkpoint"
    head = model_from_checkpoint(ckpt, "cached")
    clip, weights = create_clip(ckpt.config.backbone)
    if weights.random:
        console.print(f"[bold red]WARNING: {weights.model} has RANDOM weights (no weights in the checkpoint's "
                      "backbone config): these predictions carry no pretrained knowledge[/]")
    tower = FrozenImageTower(clip, with_patches=head.video_specific_prompt is not None)
    if tower.embed_dim != head.dims["embed_dim"]:
        raise AnimClipError(f"{ckpt.path}: the head takes {head.dims['embed_dim']}-d features, "
                            f"{weights.model} gives {tower.embed_dim}-d")
    return head, tower, weights.pretrained or "random"
