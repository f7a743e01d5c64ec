"""The frozen open_clip image tower that phase one caches, and the text tower that encodes classes.

Per frame it returns the CLS embedding after ``ln_post`` and ``proj`` (what the temporal module
consumes, docs/method.md §2.2, §2.13) and, on request, the patch tokens as the last block outputs them
(before ``ln_post``: the form X-CLIP's video-specific prompt consumes). Weights come from an
open_clip tag (``openai`` needs internet), a local checkpoint file, the tiny model's weights
shipped with the package (``demo-world``), or nowhere (random init, announced loudly).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from anim_clip.config import BackboneConfig
from anim_clip.errors import AnimClipError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TINY_MODEL = "anim-clip-tiny"
SHIPPED_TAG = "demo-world"  # the tiny CLIP pretrained on rendered demo frames, shipped in the package
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@lru_cache(maxsize=1)
def register_tiny_model() -> None:
    """Make ``anim-clip-tiny`` an open_clip model name (tests and the offline demo use it)."""
    import open_clip

    open_clip.add_model_config(ASSETS / f"{TINY_MODEL}.json")


def shipped_weights(model: str) -> Path:
    return ASSETS / f"{model}-{SHIPPED_TAG}.safetensors"


@dataclass(frozen=True)
class WeightsInfo:
    """What the features were computed with; recorded in every cache and checkpoint."""

    model: str
    pretrained: str | None  # tag or file path, None = random
    sha256: str | None  # of the checkpoint file, when the weights came from one

    @property
    def random(self) -> bool:
        return self.pretrained is None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_weights(cfg: BackboneConfig) -> tuple[str | None, WeightsInfo]:
    """Map ``cfg.pretrained`` to what open_clip takes (a tag or a file) plus provenance."""
    pretrained = cfg.pretrained
    if pretrained is None:
        return None, WeightsInfo(cfg.model, None, None)
    if pretrained == SHIPPED_TAG:
        path = shipped_weights(cfg.model)
        if not path.is_file():
            raise AnimClipError(f"no '{SHIPPED_TAG}' weights ship for {cfg.model!r}; only {TINY_MODEL} has them "
                                f"(run `anim-clip pretrain-tiny` to make {path.name})")
        return str(path), WeightsInfo(cfg.model, SHIPPED_TAG, file_sha256(path))
    path = Path(pretrained).expanduser()
    if path.suffix in CHECKPOINT_SUFFIXES or path.exists():
        if not path.is_file():
            raise AnimClipError(f"{path}: checkpoint file not found (backbone.pretrained)")
        return str(path), WeightsInfo(cfg.model, str(path), file_sha256(path))
    return pretrained, WeightsInfo(cfg.model, pretrained, None)


@contextmanager
def _quiet_logging():
    """open_clip logs "initialized randomly" on the root logger; random weights get our own louder warning."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def create_clip(cfg: BackboneConfig) -> tuple[torch.nn.Module, WeightsInfo]:
    """An open_clip CLIP model in eval mode, as ``cfg`` asks, and where its weights came from."""
    import open_clip

    register_tiny_model()
    if cfg.model not in open_clip.list_models():
        raise AnimClipError(f"unknown open_clip model {cfg.model!r} (backbone.model); e.g. ViT-B-16, {TINY_MODEL}")
    pretrained, info = resolve_weights(cfg)
    try:
        # random weights are seeded: a resumed or sharded extraction must see the same model
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]), _quiet_logging():
            warnings.simplefilter("ignore")  # open_clip warns about QuickGELU mismatches; we enforce it below
            torch.manual_seed(0)
            model = open_clip.create_model(cfg.model, pretrained=pretrained, force_quick_gelu=cfg.quick_gelu)
    except Exception as e:  # weights of another shape, damaged or hostile files, unknown tags, no network
        from anim_clip.models.checkpoint import load_refusal

        if isinstance(e, RuntimeError) and any(s in str(e) for s in ("Unexpected key", "Missing key", "size mismatch")):
            raise AnimClipError(f"{pretrained}: weights do not fit {cfg.model!r} ({str(e).splitlines()[0]})") from None
        if info.sha256 is not None:  # a local file
            raise load_refusal(pretrained, e) from None
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AnimClipError(f"cannot load {cfg.model!r} weights {pretrained!r}: {reason}") from None
    return model.eval(), info


class FrozenImageTower(torch.nn.Module):
    """open_clip's image tower without gradients: frames in, per-frame CLS (+ patch tokens) out."""

    def __init__(self, clip: torch.nn.Module, with_patches: bool = False):
        super().__init__()
        self.visual = clip.visual
        self.with_patches = with_patches
        self.requires_grad_(False)
        self.eval()

    @property
    def embed_dim(self) -> int:
        return self.visual.output_dim

    @property
    def patch_shape(self) -> tuple[int, int]:
        """(patches per frame, width) of the last block's tokens."""
        grid = self.visual.grid_size
        return grid[0] * grid[1], self.visual.transformer.width

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(N,3,S,S)`` normalised -> CLS ``(N,D)`` and patches ``(N,P,W)`` or None."""
        if not self.with_patches:
            return self.visual(images), None
        out = self.visual.forward_intermediates(images, indices=1, output_fmt="NLC")
        return out["image_features"], out["image_intermediates"][-1]


@torch.inference_mode()
def encode_texts(clip: torch.nn.Module, strings: list[str], model_name: str, batch_size: int = 256) -> torch.Tensor:
    """Raw (un-normalised) EOT-pooled, projected text embeddings ``(S, D)`` float32 (docs/method.md §2.4)."""
    import open_clip

    tokenizer = open_clip.get_tokenizer(model_name)
    device = next(clip.parameters()).device
    chunks = [
        clip.encode_text(tokenizer(strings[i : i + batch_size]).to(device), normalize=False).float().cpu()
        for i in range(0, len(strings), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.zeros(0, clip.text_projection.shape[1])
