"""The open_clip model behind the frozen image tower that phase one caches, and the text tower that
encodes classes, for any open_clip backbone.

``backbone.model`` is what open_clip takes: a model name (``ViT-B-16``, ``ViT-B-16-SigLIP``, the
shipped ``anim-clip-tiny``), ``hf-hub:org/repo`` or ``local-dir:/path`` (a downloaded folder with
``open_clip_config.json`` and the weights). A name's weights come from ``backbone.pretrained``: an
open_clip tag (``openai`` needs internet), a local checkpoint file, the tiny model's weights shipped
with the package (``demo-world``), or nowhere (random init, announced loudly); ``hf-hub:`` and
``local-dir:`` models bring their own weights, activation and preprocessing.

What the rest of the package needs to know of the model is read from the built model: the
embedding width and patch grid of its image tower (:class:`FrozenImageTower`), the pixels it takes
(:func:`model_pixels`: size, mean, std, interpolation), its tokenizer and text context
(:func:`encode_texts`, :func:`text_fit`). Per frame the tower returns the embedding ``encode_image``
gives (un-normalised; for open_clip's ViT the CLS token after ``ln_post`` and ``proj``, docs/method.md
§2.2, §2.13) and, on request and where the tower has them, the patch tokens as its last block
outputs them (before the final norm: the form X-CLIP's video-specific prompt consumes).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import torch

from anim_clip.config import BackboneConfig
from anim_clip.data.descriptions import TextFit
from anim_clip.data.transforms import CLIP_MEAN, CLIP_STD, INTERPOLATIONS, Pixels
from anim_clip.errors import AnimClipError, ConfigError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TINY_MODEL = "anim-clip-tiny"
SHIPPED_TAG = "demo-world"  # the tiny CLIP pretrained on rendered demo frames, shipped in the package
# The tiny model's own preprocessing: how `anim-clip pretrain-tiny` renders its frames.
TINY_PREPROCESS = {"mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bilinear"}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
HF_HUB, LOCAL_DIR = "hf-hub:", "local-dir:"
LOCAL_CONFIG = "open_clip_config.json"
PROBE_SECONDS = 10  # one look at the hub before open_clip's download, which retries for about a minute


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
    pretrained: str | None  # tag, file path or hf-hub: model; None = random
    sha256: str | None  # of the checkpoint file (and a local-dir:'s config), when the weights came from one

    @property
    def random(self) -> bool:
        return self.pretrained is None

    @property
    def identity(self) -> str:
        """What a cache signature records: the weights file's sha256, else the tag, else "random"."""
        return self.sha256 or self.pretrained or "random"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def brings_weights(model: str) -> bool:
    """``hf-hub:`` and ``local-dir:`` models come with their weights, activation and preprocessing."""
    return model.startswith((HF_HUB, LOCAL_DIR))


def local_dir(model: str, section: str = "backbone") -> Path:
    """The folder of a ``local-dir:`` model, refused in one line (naming ``section.model``) unless it
    holds an open_clip config."""
    folder = Path(model.removeprefix(LOCAL_DIR))
    config = folder / LOCAL_CONFIG
    if not config.is_file():
        found = "is not a folder" if not folder.is_dir() else f"has no {LOCAL_CONFIG}"
        raise ConfigError(f"{section}.model: {folder} {found}; point local-dir: at a downloaded open_clip model "
                          f"(`hf download ORG/REPO --local-dir {folder}`)")
    return folder


def _model_config(model: str, section: str) -> dict:
    """The architecture open_clip builds for ``model`` (``model_cfg``), refused in one line if unreadable."""
    import open_clip

    check_downloadable(model, None, section)  # an hf-hub: model's config comes from the hub
    try:
        found = open_clip.get_model_config(model)
    except Exception as e:  # an unreadable local config; no hub access or no such repository
        raise ConfigError(f"{section}.model: cannot read the open_clip config of {model!r} "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(found, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(found):
        raise ConfigError(f"{section}.model: {model!r} has no open_clip model config (embed_dim, vision_cfg, text_cfg)")
    return found


def check_backbone(cfg: BackboneConfig, section: str = "backbone") -> None:
    """Refuse, in one line naming the fields of config ``section`` (``backbone``, or ``species`` for
    the species predictor), a model open_clip does not know, or a ``pretrained`` or ``quick_gelu``
    that contradicts a model bringing its own weights and activation."""
    import open_clip

    register_tiny_model()
    if not brings_weights(cfg.model):
        if cfg.model not in open_clip.list_models():
            raise ConfigError(f"{section}.model: unknown open_clip model {cfg.model!r}; give a name (e.g. ViT-B-16, "
                              f"{TINY_MODEL}), hf-hub:org/repo or local-dir:/path")
        return
    if cfg.model.startswith(LOCAL_DIR):
        local_dir(cfg.model, section)
    if cfg.pretrained is not None:
        raise ConfigError(f"{section}.pretrained={cfg.pretrained!r} contradicts {section}.model={cfg.model!r}, which "
                          f"brings its own weights: set {section}.pretrained=null")
    if cfg.quick_gelu and not _model_config(cfg.model, section).get("quick_gelu", False):
        raise ConfigError(f"backbone.quick_gelu=true would turn the GELU of {cfg.model!r} (its config sets no "
                          "quick_gelu) into QuickGELU: set backbone.quick_gelu=false")


def _local_weights(model: str, section: str) -> tuple[str | None, WeightsInfo]:
    """The weights file open_clip loads from a ``local-dir:`` folder, hashed with the folder's config
    (which fixes the architecture and preprocessing); none found = random init."""
    from open_clip.factory import _find_checkpoint_in_dir  # the file open_clip itself picks

    folder = local_dir(model, section)
    found = _find_checkpoint_in_dir(folder)
    if found is None:
        return None, WeightsInfo(model, None, None)
    digest = hashlib.sha256(f"{file_sha256(folder / LOCAL_CONFIG)} {file_sha256(found)}".encode()).hexdigest()
    return None, WeightsInfo(model, found, digest)


def resolve_weights(cfg: BackboneConfig, section: str = "backbone") -> tuple[str | None, WeightsInfo]:
    """Map ``cfg.pretrained`` to what open_clip takes (a tag or a file) plus provenance; a model that
    brings its weights takes none (a ``local-dir:``'s are hashed, an ``hf-hub:``'s named by the repository)."""
    if cfg.model.startswith(LOCAL_DIR):
        return _local_weights(cfg.model, section)
    if cfg.model.startswith(HF_HUB):
        return None, WeightsInfo(cfg.model, cfg.model, None)
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
            raise AnimClipError(f"{path}: checkpoint file not found ({section}.pretrained)")
        return str(path), WeightsInfo(cfg.model, str(path), file_sha256(path))
    if not _tag_source(cfg.model, pretrained):
        import open_clip

        tags = ", ".join(open_clip.list_pretrained_tags_by_model(cfg.model)) or "none"
        raise ConfigError(f"{section}.pretrained: {pretrained!r} is neither a file nor an open_clip tag of "
                          f"{cfg.model!r} (its tags: {tags}; {SHIPPED_TAG} for {TINY_MODEL}; null for random weights)")
    return pretrained, WeightsInfo(cfg.model, pretrained, None)


def _tag_source(model: str, tag: str) -> dict:
    """open_clip's record of where ``model``'s ``tag`` weights come from (empty when it knows no such tag)."""
    import open_clip

    return open_clip.get_pretrained_cfg(model, tag)


def _hub_files(model: str, pretrained: str | None) -> tuple[str, list[str]] | None:
    """The Hugging Face repository, and the files in it (any one will do), that open_clip downloads
    for ``model``: an ``hf-hub:`` model's config, or a tag's weights; None when nothing comes from the hub."""
    from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives  # the files open_clip itself tries

    if model.startswith(HF_HUB):
        return model.removeprefix(HF_HUB), [LOCAL_CONFIG]
    source = _tag_source(model, pretrained).get("hf_hub", "") if pretrained else ""
    if not source:
        return None
    repo, filename = os.path.split(source)
    filename = filename or HF_WEIGHTS_NAME
    return repo, [*_get_safe_alternatives(filename), filename]


def _offline_choices(section: str) -> str:
    """What runs without the hub, as the config keys to set."""
    trial = f"{section}.model={TINY_MODEL} with {section}.pretrained={SHIPPED_TAG}"
    if section == "backbone":
        trial += " and sampling.image_size=64 (as the shipped own-videos config does)"
    return (f"offline, set {section}.pretrained=/path/to/weights.safetensors (a downloaded weights file), "
            f"{section}.model=local-dir:/path with {section}.pretrained=null (a downloaded open_clip folder), "
            f"or, to try the pipeline, {trial}")


def check_downloadable(model: str, pretrained: str | None, section: str = "backbone") -> None:
    """Refuse at once, in one line naming the offline choices, what open_clip would download from the
    Hugging Face hub when it is neither in the hub's local cache nor reachable (offline, no network,
    the hub failing), instead of letting the download retry for about a minute and then fail."""
    found = _hub_files(model, pretrained)
    if found is None:
        return
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, OfflineModeIsEnabled

    repo, files = found
    if any(isinstance(huggingface_hub.try_to_load_from_cache(repo, name), str) for name in files):
        return
    try:
        huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(repo, files[-1]), timeout=PROBE_SECONDS)
    except EntryNotFoundError:  # the hub answers; open_clip picks among the repository's files
        return
    except Exception as e:  # offline mode, no network, a hub error, a gated or missing repository
        reason = "HF_HUB_OFFLINE is set" if isinstance(e, OfflineModeIsEnabled) else _first_line(e)
        what = model if model.startswith(HF_HUB) else f"the {pretrained!r} weights of {model!r}"
        raise AnimClipError(f"cannot download {what} from the Hugging Face hub ({repo}: {reason}); "
                            f"{_offline_choices(section)}") from None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@contextmanager
def _quiet_logging():
    """open_clip logs "initialized randomly" on the root logger (random weights get our own louder
    warning), and logs each error it then raises, which our one-line refusal already says."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _preprocess_override(cfg: BackboneConfig, load_weights: bool) -> dict | None:
    """What open_clip would not know of the preprocessing: the tiny model's own, and, when a tag's
    weights are not loaded, the tag's (so the same tower without weights takes the same pixels)."""
    import open_clip

    if cfg.model == TINY_MODEL:
        return TINY_PREPROCESS
    if load_weights or brings_weights(cfg.model) or cfg.pretrained is None:
        return None
    tag = open_clip.get_pretrained_cfg(cfg.model, cfg.pretrained)
    return {k: tag[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag} or None


def create_clip(cfg: BackboneConfig, *, load_weights: bool = True,
                section: str = "backbone") -> tuple[torch.nn.Module, WeightsInfo]:
    """The open_clip model ``cfg`` names, in eval mode, and where its weights came from. Without
    ``load_weights``: the same architecture and preprocessing, randomly initialised (a checkpoint's
    weights follow). Any backbone spec works, so a second model (the zero-shot species predictor,
    config ``section`` ``species``, named in refusals) is built the same way."""
    import open_clip

    check_backbone(cfg, section)
    pretrained, info = resolve_weights(cfg, section) if load_weights else (None, WeightsInfo(cfg.model, None, None))
    check_downloadable(cfg.model, pretrained, section)
    try:
        # random weights are seeded: a resumed or sharded extraction must see the same model
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]), _quiet_logging():
            warnings.simplefilter("ignore")  # open_clip warns about QuickGELU mismatches; we enforce it below
            torch.manual_seed(0)
            model = open_clip.create_model(cfg.model, pretrained=pretrained, load_weights=load_weights,
                                           force_quick_gelu=cfg.quick_gelu,
                                           force_preprocess_cfg=_preprocess_override(cfg, load_weights))
    except Exception as e:  # weights of another shape, damaged or hostile files, unknown tags, no network
        from anim_clip.models.untrusted import load_refusal

        source = info.pretrained or cfg.model
        if isinstance(e, RuntimeError) and any(s in str(e) for s in ("Unexpected key", "Missing key", "size mismatch")):
            raise AnimClipError(f"{source}: weights do not fit {cfg.model!r} ({str(e).splitlines()[0]})") from None
        if info.sha256 is not None:  # a local file
            raise load_refusal(source, e) from None
        raise AnimClipError(f"cannot load {cfg.model!r} weights {source!r}: {_first_line(e)}") from None
    return model.eval(), info


def model_pixels(clip: torch.nn.Module) -> Pixels:
    """The pixels an open_clip model takes, from its preprocess config (open_clip's defaults where
    its config names none: CLIP's statistics, bicubic)."""
    import open_clip

    pre = open_clip.get_model_preprocess_cfg(clip)
    size = pre["size"] if isinstance(pre["size"], int) else tuple(pre["size"])
    if not isinstance(size, int) and size[0] != size[1]:
        raise AnimClipError(f"the backbone takes {size[0]}x{size[1]} images; anim-clip renders square views only")
    interpolation = pre.get("interpolation", "bicubic")
    if interpolation not in INTERPOLATIONS:
        raise AnimClipError(f"the backbone resizes with {interpolation!r}, which anim-clip does not render: set "
                            f"sampling.interpolation to {' or '.join(INTERPOLATIONS)}")
    return Pixels(size if isinstance(size, int) else size[0], tuple(map(float, pre.get("mean", CLIP_MEAN))),
                  tuple(map(float, pre.get("std", CLIP_STD))), interpolation, pre.get("resize_mode", "shortest"))


def has_patch_tokens(visual: torch.nn.Module) -> bool:
    """open_clip's ViT, or a timm tower with a patch embedding (ViT, EVA, SigLIP's ViT), outputs
    tokens; convolutional towers (ConvNeXt, ResNet) have none."""
    from open_clip.transformer import VisionTransformer

    return isinstance(visual, VisionTransformer) or hasattr(getattr(visual, "trunk", None), "patch_embed")


def tower_name(visual: torch.nn.Module) -> str:
    """``VisionTransformer``, or ``TimmModel (convnext_tiny)``: what a refusal names."""
    timm_name = (getattr(getattr(visual, "trunk", None), "pretrained_cfg", None) or {}).get("architecture")
    return f"{type(visual).__name__} ({timm_name})" if timm_name else type(visual).__name__


class FrozenImageTower(torch.nn.Module):
    """open_clip's image tower without gradients: frames in, per-frame embedding (+ patch tokens) out."""

    def __init__(self, clip: torch.nn.Module, patches: bool = False):
        super().__init__()
        self.visual = clip.visual
        self.pixels = model_pixels(clip)
        if patches and not has_patch_tokens(self.visual):
            raise AnimClipError(f"the image tower {tower_name(self.visual)} has no patch tokens, which "
                                "backbone.patches=fp16 and model.video_specific_prompt need: use a ViT backbone, or "
                                "backbone.patches=none and model.video_specific_prompt=false")
        self.patches = patches  # returns patch tokens too
        self.requires_grad_(False)
        self.eval()

    @cached_property
    def _shapes(self) -> tuple[int, tuple[int, int] | None]:
        """Embedding width and ``(patches, width)`` (None without patch tokens), from one blank frame."""
        param = next(self.visual.parameters())
        blank = torch.zeros(1, 3, self.pixels.size, self.pixels.size, device=param.device, dtype=param.dtype)
        with torch.inference_mode():
            if not has_patch_tokens(self.visual):
                return self.visual(blank).shape[-1], None
            out = self.visual.forward_intermediates(blank, indices=1, output_fmt="NLC")
        return out["image_features"].shape[-1], tuple(out["image_intermediates"][-1].shape[1:])

    @property
    def embed_dim(self) -> int:
        return self._shapes[0]

    @property
    def patch_shape(self) -> tuple[int, int] | None:
        """(patches per frame, width) of the last block's tokens; None for a tower without tokens."""
        return self._shapes[1]

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(N,3,S,S)`` normalised -> embeddings ``(N,D)`` and patches ``(N,P,W)`` or None."""
        if not self.patches:
            return self.visual(images), None
        out = self.visual.forward_intermediates(images, indices=1, output_fmt="NLC")
        return out["image_features"], out["image_intermediates"][-1]


@lru_cache(maxsize=8)
def tokenizer(model: str):
    """open_clip's tokenizer for ``model`` (any backbone spec), with the model's own context length."""
    import open_clip

    register_tiny_model()
    return open_clip.get_tokenizer(model)


def text_fit(model: str) -> TextFit:
    """How ``model``'s text tower counts tokens and how many it reads: what sentence splitting fills."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = tokenizer(model)
    if isinstance(tok, SimpleTokenizer):
        return TextFit(tok.context_length, lambda text: len(tok.encode(text)) + 2)  # + start and end tokens
    return TextFit(tok.context_length, lambda text: len(tok.tokenizer(text)["input_ids"]))  # HF: special tokens included


@torch.inference_mode()
def encode_texts(clip: torch.nn.Module, strings: list[str], model: str, batch_size: int = 256) -> torch.Tensor:
    """Raw (un-normalised) pooled, projected text embeddings ``(S, D)`` float32 with ``model``'s own
    tokenizer (docs/method.md §2.4); ``model`` is any backbone spec."""
    tokenize = tokenizer(model)
    device = next(clip.parameters()).device
    batches = [strings[i : i + batch_size] for i in range(0, len(strings), batch_size)] or [[""]]
    out = torch.cat([clip.encode_text(tokenize(b).to(device), normalize=False).float().cpu() for b in batches])
    return out[: len(strings)]
