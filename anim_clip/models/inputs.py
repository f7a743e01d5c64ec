"""What the head is given besides its frames' CLS embeddings, decided in one place.

The head conditions on a species vector, and X-CLIP's video-specific prompt reads patch tokens.
Where the species vector comes from is a decision with four outcomes (docs/method.md §2.5, D1):

- ``annotated``: given to the head as it is, from the annotation (training, evaluation) or from
  the species a user names (``predict --species``);
- ``predictor``: given to the head as it is, the probabilities of the separate species predictor
  ``species.model`` (cached by phase one, or run on the same views);
- ``zero-shot``: the head's own zero-shot guess from the frames (``species_source=predicted``
  without ``species.model``);
- ``none``: zeros (``species_source=none``).

:class:`HeadInputs` holds the outcome and whether patch tokens are read. A run derives it once
from its config (:meth:`HeadInputs.of_config`); a checkpoint stores it; ``predict`` derives the one
it scores with from the checkpoint's and the user's options (:func:`prediction_inputs`). Every other
module reads the value and never looks at ``model.species_source`` or ``species.model`` to decide
again (``tests/test_layering.py`` fails if one does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from anim_clip.config import Config
from anim_clip.errors import AnimClipError

SpeciesInput = Literal["annotated", "predictor", "zero-shot", "none"]
# ``model.species_source``'s word for each, as configs and outputs name them.
SOURCES = {"annotated": "oracle", "predictor": "predicted", "zero-shot": "predicted", "none": "none"}


@dataclass(frozen=True)
class HeadInputs:
    """What the head takes: where its species vector comes from (module docstring), and whether it
    reads patch tokens (X-CLIP's video-specific prompt)."""

    species: SpeciesInput
    patches: bool = False

    def __post_init__(self) -> None:
        if self.species not in get_args(SpeciesInput):
            raise AnimClipError(f"unknown species input {self.species!r}: one of {', '.join(get_args(SpeciesInput))}")

    @classmethod
    def of_config(cls, cfg: Config) -> HeadInputs:
        """A run's inputs, from ``model.species_source``, ``species.model`` and
        ``model.video_specific_prompt``."""
        source = cfg.model.species_source
        if source == "predicted":
            species = "predictor" if cfg.species.model is not None else "zero-shot"
        else:
            species = "annotated" if source == "oracle" else "none"
        return cls(species, cfg.model.video_specific_prompt)

    @property
    def given(self) -> bool:
        """Whether the caller hands the head its species vector (the annotation, the user's species or
        the predictor's probabilities); otherwise the head makes it (zero-shot, or zeros)."""
        return self.species in ("annotated", "predictor")

    @property
    def source(self) -> str:
        """``model.species_source``'s word for the species input (``oracle``, ``predicted``, ``none``)."""
        return SOURCES[self.species]

    def with_species(self, species: SpeciesInput) -> HeadInputs:
        return HeadInputs(species, self.patches)

    def to_dict(self) -> dict[str, Any]:
        return {"species": self.species, "patches": self.patches}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> HeadInputs:
        return cls(stored["species"], bool(stored["patches"]))


def prediction_inputs(trained: HeadInputs, cfg: Config, *, named: bool, predict: bool) -> HeadInputs:
    """The inputs a head trained with ``trained`` inputs and config ``cfg`` scores a user's videos
    with: the species the user ``named`` (``--species``), else predicted from the frames — by the
    species predictor ``cfg`` names (``species.model``) when it names one, else zero-shot by the
    head; a head trained without species takes none. ``predict`` (``--predict-species``) asks for the
    prediction explicitly."""
    if named and predict:
        raise AnimClipError("give --species or --predict-species, not both")
    if trained.species == "none":
        if named or predict:
            raise AnimClipError("this checkpoint was trained without species (model.species_source=none): "
                                "--species and --predict-species do not apply")
        return trained
    if named:
        return trained.with_species("annotated")
    return trained.with_species("predictor" if cfg.species.model is not None else "zero-shot")
