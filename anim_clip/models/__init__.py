"""Animal-CLIP models: the head trained from the feature cache, and the end-to-end model.

Entry points: :class:`AnimalCLIPHead`, :class:`AnimalCLIP`, :func:`build_head`, :func:`end_to_end`,
:func:`load_release_model`, :func:`save_checkpoint` / :func:`load_checkpoint`,
:func:`parameter_summary`. Names are imported on first use, so ``anim_clip.models.features``
(which every cache reader and writer needs) does not pull in open_clip.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AnimalCLIP": "animal_clip",
    "Checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_untrusted": "untrusted",
    "model_from_checkpoint": "factory",
    "save_checkpoint": "checkpoint",
    "build_head": "factory",
    "end_to_end": "factory",
    "FrameFeatures": "features",
    "HeadOutput": "features",
    "AnimalCLIPHead": "head",
    "HeadVocabulary": "head",
    "convert_release_checkpoint": "release",
    "convert_to_release": "release",
    "load_release_model": "release",
    "ParameterRow": "summary",
    "parameter_summary": "summary",
    "pool_text": "text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'anim_clip.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"anim_clip.models.{_EXPORTS[name]}"), name)
