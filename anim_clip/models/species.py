"""The separate zero-shot species predictor (``species.model``, BioCLIP say) whose probabilities a
head with ``predictor`` species inputs conditions on (:mod:`anim_clip.models.inputs`, docs/method.md
§2.5, D1).

Any open_clip model the backbone accepts (a name with ``species.pretrained``, ``hf-hub:``,
``local-dir:``) is built as the backbone is (:func:`~anim_clip.models.backbone.create_clip`). Its
image tower encodes the same views of a clip as the action backbone, rendered with the predictor's
own pixels (size, mean, std, interpolation from its preprocess config). Each view's frame-mean
embedding, L2-normalised, is scored against the L2-normalised text embeddings of
``template.format(name)`` for every species, times the model's own ``logit_scale.exp()``, and
softmaxed over species; a clip's probabilities are the mean over its views. Phase one caches them
per clip, and the head takes them as its species vector, as it takes an annotation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anim_clip.config import BackboneConfig, SpeciesConfig
from anim_clip.data.transforms import Pixels
from anim_clip.errors import ConfigError
from anim_clip.models.backbone import FrozenImageTower, WeightsInfo, check_backbone, create_clip, encode_texts
from anim_clip.ui import console

SECTION = "species"  # the config section refusals name


def predictor_backbone(cfg: SpeciesConfig) -> BackboneConfig:
    """The predictor as a backbone spec; its activation is the one its config names."""
    return BackboneConfig(model=cfg.model, pretrained=cfg.pretrained, quick_gelu=False)


def check_template(template: str) -> None:
    """Refuse a template with no ``{}`` for the name (every species would get the same text) or
    with fields ``str.format`` cannot fill with the name alone."""
    try:
        fits = "{}" in template and bool(template.format("name"))
    except (IndexError, KeyError, ValueError):
        fits = False
    if not fits:
        raise ConfigError(f"species.template={template!r} must hold one {{}} where each species name goes and no "
                          "other braces, e.g. 'a photo of {}.'")


def check_predictor(cfg: SpeciesConfig) -> None:
    """Refuse, before any weights load, a template or model spec the predictor cannot use."""
    check_template(cfg.template)
    check_backbone(predictor_backbone(cfg), SECTION)


class SpeciesPredictor(nn.Module):
    """A frozen open_clip model as a zero-shot classifier over a fixed list of species."""

    def __init__(self, clip: nn.Module, names: Sequence[str], cfg: SpeciesConfig):
        super().__init__()
        check_template(cfg.template)
        self.tower = FrozenImageTower(clip)
        text = encode_texts(clip, [cfg.template.format(name) for name in names], cfg.model)
        self.register_buffer("text", F.normalize(text, dim=-1))  # (A, D)
        self.logit_scale = float(clip.logit_scale.detach().exp())

    @property
    def pixels(self) -> Pixels:
        """The predictor's own pixels: its views are rendered as its preprocess config says."""
        return self.tower.pixels

    @torch.no_grad()
    def probabilities(self, frames: Tensor) -> Tensor:
        """``(V, T, D)`` per-frame embeddings of views -> ``(V, A)`` species probabilities."""
        video = F.normalize(frames.float().mean(1), dim=-1)
        return (self.logit_scale * video @ self.text.T).softmax(-1)


def species_predictor(cfg: SpeciesConfig, names: Sequence[str]) -> tuple[SpeciesPredictor, WeightsInfo]:
    """The predictor ``cfg`` names for the species ``names``, and where its weights came from."""
    check_predictor(cfg)
    if not names:
        raise ConfigError(f"species.model={cfg.model!r} predicts species, but the dataset names none: "
                          "set species.model=null")
    clip, weights = create_clip(predictor_backbone(cfg), section=SECTION)
    if weights.random:
        console.print(f"[bold red]WARNING: the species predictor {cfg.model} has RANDOM weights (species.pretrained "
                      "is null): its species probabilities carry no knowledge[/]")
    return SpeciesPredictor(clip, names, cfg), weights
