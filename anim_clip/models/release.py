"""Compatibility with the Animal-CLIP release (github.com/PRIS-CV/Animal-CLIP, class ``XCLIP``).

Its checkpoints are X-CLIP-style dicts ``{'model': state_dict, 'optimizer', 'lr_scheduler',
'max_accuracy', 'epoch', 'config': yacs CfgNode}``, keys possibly prefixed ``module.`` (DDP).
Key names (fixture README) map to ours by prefix; the two generators' MLPs are renamed
``mlp.0/3 -> mlp.c_fc/c_proj``. ``prompts_visual_ln``/``prompts_visual_proj`` are dropped on
purpose: the release computes them and never uses the result (docs/method.md §2.2, D16).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import open_clip
from torch import Tensor

from anim_clip.config import Config, ModelConfig
from anim_clip.errors import AnimClipError
from anim_clip.io import atomic_write
from anim_clip.models.animal_clip import CUSTOM, AnimalCLIP, clip_configs_from_state_dict, clip_from_state_dict
from anim_clip.models.checkpoint import load_checkpoint, load_state_strict, save_checkpoint, torch_save
from anim_clip.models.head import AnimalCLIPHead
from anim_clip.models.inputs import HeadInputs
from anim_clip.models.untrusted import load_untrusted, plain

# (release prefix, our prefix); the first match wins.
_PREFIXES = (
    ("visual.", "visual."),
    ("mit.", "head.mit."),
    ("graph.", "head.refine."),
    ("prompts_generator1.", "head.text_prompt."),
    ("prompts_generator2.", "head.video_prompt."),
    ("token_embedding.", "text.token_embedding."),
    ("positional_embedding", "text.positional_embedding"),
    ("transformer.", "text.transformer."),
    ("ln_final.", "text.ln_final."),
    ("text_projection", "text.text_projection"),
    ("logit_scale", "text.logit_scale"),
)
_GENERATOR_MLP = ((".mlp.0.", ".mlp.c_fc."), (".mlp.3.", ".mlp.c_proj."))
UNUSED_RELEASE_KEYS = ("prompts_visual_ln.weight", "prompts_visual_ln.bias", "prompts_visual_proj")
RELEASE_INPUTS = HeadInputs("annotated")  # the release feeds the annotated species, never patch tokens


def _rename(key: str, to_ours: bool) -> str | None:
    for release, ours in _PREFIXES:
        src, dst = (release, ours) if to_ours else (ours, release)
        if key.startswith(src):
            new = dst + key[len(src) :]
            if "prompt" in src:
                for a, b in _GENERATOR_MLP:
                    new = new.replace(*((a, b) if to_ours else (b, a)))
            return new
    return None


def release_to_ours(state: Mapping[str, Tensor], source: str | Path = "<state dict>") -> dict[str, Tensor]:
    """Release key names -> :class:`AnimalCLIP` names; unknown keys are an error."""
    out, unknown = {}, []
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key in UNUSED_RELEASE_KEYS:
            continue
        new = _rename(key, to_ours=True)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise AnimClipError(f"{source}: not an Animal-CLIP release state dict: unknown keys {', '.join(unknown[:5])}")
    return out


def ours_to_release(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """:class:`AnimalCLIP` names -> release names (the head's vocabulary is not part of the release)."""
    out = {}
    for key, value in state.items():
        if key.startswith("head.vocab."):
            continue
        new = _rename(key, to_ours=False)
        if new is None:
            raise AnimClipError(f"the release has no counterpart for {key}")
        out[new] = value
    return out


def _count(state: Mapping[str, Tensor], prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})


def release_head_config(state: Mapping[str, Tensor]) -> tuple[ModelConfig, dict[str, int | None]]:
    """Head options and dimensions of a (renamed) release state dict; the rest is the release's."""
    try:
        prompt_layers = _count(state, "head.text_prompt.decoder.")
        if prompt_layers != _count(state, "head.video_prompt.decoder."):
            raise AnimClipError("the two prompt generators have different depths; not an Animal-CLIP checkpoint")
        cfg = ModelConfig(
            mit_layers=_count(state, "head.mit.resblocks."),
            prompt_layers=prompt_layers,
            logit_scale=math.exp(float(state["text.logit_scale"])),
        )
        dims = {
            "embed_dim": state["text.text_projection"].shape[1],
            "num_frames": state["head.mit.positional_embedding"].shape[1],
            "patch_width": None,
            "gcn_hidden": state["head.refine.layers.0.weight"].shape[1],
        }
    except KeyError as e:
        raise AnimClipError(f"not an Animal-CLIP release state dict: no {e.args[0]!r}") from None
    return cfg, dims


def load_release_model(
    state_dict: Mapping[str, Tensor], num_frames: int | None = None, *, source: str | Path = "<state dict>"
) -> AnimalCLIP:
    """The end-to-end model with every dimension read from a release state dict, loaded
    strictly, in eval mode. ``num_frames``, when given, must match the checkpoint's MIT."""
    state = release_to_ours(state_dict, source)
    cfg, dims = release_head_config(state)
    if num_frames is not None and num_frames != dims["num_frames"]:
        raise AnimClipError(f"{source}: the checkpoint integrates {dims['num_frames']} frames, not {num_frames}")
    model = AnimalCLIP(clip_from_state_dict(state, quick_gelu=True), AnimalCLIPHead(cfg, inputs=RELEASE_INPUTS, **dims))
    load_state_strict(model, state, source)
    return model.eval()


def read_release_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """``(state_dict, everything else)`` from an authors' file (or a bare / fixture state dict)."""
    obj = load_untrusted(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return checked_weights(obj["model"], path), {k: plain(v) for k, v in obj.items()
                                                      if k not in ("model", "optimizer", "lr_scheduler")}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return checked_weights(obj["state_dict"], path), {}
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return checked_weights(obj, path), {}
    raise AnimClipError(f"{path}: no state dict found (expected the release's {{'model': state_dict, ...}})")


def checked_weights(state: dict[str, object], source: str | Path) -> dict[str, Tensor]:
    """``state`` if every value is a tensor of finite numbers: anything else would fail deep in
    torch or, worse (NaN/inf from a diverged run or a damaged file), convert and score garbage."""
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise AnimClipError(f"{source}: not a tensor in the state dict: {_keys(not_tensors)}")
    non_finite = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if non_finite:
        raise AnimClipError(f"{source}: NaN or inf in {_keys(non_finite)}: the checkpoint is damaged or its training "
                            "diverged; convert another one")
    return state  # type: ignore[return-value]


def _keys(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def open_clip_name(state: Mapping[str, Tensor]) -> str:
    """The open_clip config with the towers' shape, or 'custom' (the architecture is then read
    from the checkpoint itself whenever it is loaded)."""
    embed_dim, vision, text = clip_configs_from_state_dict(state)
    found = {
        "embed_dim": embed_dim,
        "vision_cfg": {k: getattr(vision, k) for k in ("image_size", "layers", "width", "patch_size")},
        "text_cfg": {k: getattr(text, k) for k in ("context_length", "vocab_size", "width", "heads", "layers")},
    }
    for name in ("ViT-B-16", "ViT-B-32", "ViT-L-14"):
        reference = open_clip.get_model_config(name)
        same_towers = all(
            {k: reference[tower].get(k) for k in found[tower]} == found[tower] for tower in ("vision_cfg", "text_cfg")
        )
        if same_towers and reference["embed_dim"] == embed_dim:
            return name
    return CUSTOM


def convert_release_checkpoint(
    src: str | Path, dst: str | Path, *, actions: list[str] | None = None, species: list[str] | None = None
) -> Path:
    """An authors' checkpoint -> an ``anim-clip/1`` end-to-end checkpoint with a release-
    compatible config (ImageNet normalisation, D5, and bilinear resizing, §4.5; the release graph, D6). Class names, when
    given, are recorded; the text embeddings and graph come from the dataset at evaluation."""
    state, rest = read_release_checkpoint(src)
    model = load_release_model(state, source=src)
    cfg = Config()
    cfg.train.mode = "e2e"
    cfg.data.graph = "release"
    cfg.sampling.num_frames = model.head.dims["num_frames"]
    cfg.sampling.normalization = "imagenet"
    cfg.sampling.interpolation = "bilinear"
    cfg.backbone.model = open_clip_name(model.state_dict())
    cfg.backbone.pretrained = None
    cfg.backbone.quick_gelu = True
    vocab = {"actions": actions, "species": species} if actions is not None and species is not None else None
    return save_checkpoint(dst, model, cfg, vocab=vocab, extra={"release": {"source": str(src), **rest}})


def release_incompatibilities(cfg: ModelConfig, inputs: HeadInputs) -> list[str]:
    """Options the release's ``XCLIP`` cannot express (it takes annotated species, no patch tokens)."""
    wanted = {"refine": True, "refine_graph": "release", "text_prompt": True, "video_prompt": True}
    bad = [f"model.{k}={getattr(cfg, k)!r}" for k, v in wanted.items() if getattr(cfg, k) != v]
    if inputs.species != RELEASE_INPUTS.species:
        bad.append(f"{inputs.species} species (it takes annotated ones)")
    if inputs.patches:
        bad.append("model.video_specific_prompt=True")
    return bad


def convert_to_release(src: str | Path, dst: str | Path) -> Path:
    """An end-to-end ``anim-clip/1`` checkpoint -> ``{'model': state_dict}`` that the release's
    ``load_checkpoint`` reads (it loads non-strictly; its unused ``prompts_visual_*`` stay as
    initialised)."""
    ckpt = load_checkpoint(src)
    if ckpt.kind != "e2e":
        raise AnimClipError(f"{src}: a head-only checkpoint; the release needs the image and text towers too")
    bad = release_incompatibilities(ckpt.config.model, ckpt.inputs)
    if bad:
        raise AnimClipError(f"{src}: the release cannot express {', '.join(bad)}")
    state = ours_to_release(ckpt.model)
    return atomic_write(dst, lambda tmp: torch_save({"model": state}, tmp))
