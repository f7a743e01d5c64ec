"""A checkpoint ready to score a user's videos: its head, the image tower that feeds it (the frozen
open_clip tower of ``config.backbone`` for a head checkpoint, the model's own cross-frame tower for
an end-to-end one), the species input it scores with and the species predictor that input needs,
and the checkpoint's test views (clips × crops, docs/method.md §4.4–4.5) — built once, never changed.

``predict`` streams many videos through it (:class:`anim_clip.predict.Predictor`); ``analyze clip
--video`` scores one. Species not named by the user are predicted: by the checkpoint's separate
species predictor (``species.model``) when its config has one, from the same views rendered with
the predictor's own pixels, its probabilities averaged over them; else zero-shot by the head
(:func:`~anim_clip.models.inputs.prediction_inputs`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anim_clip.data.sampling import eval_views
from anim_clip.data.video import FallbackNotice, VideoFile
from anim_clip.errors import AnimClipError
from anim_clip.evaluate.scoring import ViewScores, score_views
from anim_clip.frames import DecodedClip, FrameEncoder, decode_views, with_decoder, with_views
from anim_clip.models.checkpoint import Checkpoint, load_checkpoint
from anim_clip.models.factory import head_and_tower
from anim_clip.models.features import FrameFeatures
from anim_clip.models.inputs import HeadInputs, prediction_inputs
from anim_clip.models.species import species_predictor
from anim_clip.runtime.distributed import default_device


def species_vector(names: Sequence[str], vocabulary: Sequence[str]) -> Tensor:
    """Multi-hot ``(A,)`` over the checkpoint's species; names match case-insensitively and an
    unknown one is refused with the closest known names, so a typo never silently drops a species."""
    index = {name.lower(): i for i, name in enumerate(vocabulary)}
    vector = torch.zeros(len(vocabulary))
    for name in names:
        i = index.get(name.strip().lower())
        if i is None:
            close = difflib.get_close_matches(name.strip().lower(), list(index), n=3, cutoff=0.5)
            hint = (f"close matches: {', '.join(vocabulary[index[c]] for c in close)}" if close else
                    f"known species: {', '.join(vocabulary[:10])}{', ...' if len(vocabulary) > 10 else ''}")
            raise AnimClipError(f"unknown species {name!r} (--species); {hint}")
        vector[i] = 1.0
    return vector


def species_note(trained: HeadInputs, used: HeadInputs, predictor: str | None, asked: bool) -> str | None:
    """What the user should know of the species input chosen for them: predicted, and how; for a head
    trained on annotated species that was given none, that ``--species`` gives them."""
    if used.species in ("annotated", "none"):
        return None
    how = f"by the species predictor {predictor}" if used.species == "predictor" else "zero-shot"
    if not asked and trained.species == "annotated":
        return (f"no --species given: species are predicted {how} from the frames (this checkpoint was trained "
                "with annotated species; --species NAME gives them)")
    return f"species are predicted {how} from the frames" if used.species == "predictor" else None


class VideoScorer:
    """A checkpoint's head and tower with the species input for this use (module docstring)."""

    def __init__(self, checkpoint: str | Path | Checkpoint, *, species: Sequence[str] | None = None,
                 predict_species: bool = False, clips: int | None = None, crops: int | None = None,
                 device: str | torch.device | None = None, decoder: str | None = None):
        self.ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.cfg = with_decoder(with_views(self.ckpt.config, clips, crops), decoder)
        self.device = torch.device(device) if device is not None else default_device()
        head, tower, self.weights = head_and_tower(self.ckpt)
        if head.vocab is None:
            raise AnimClipError(f"{self.ckpt.path}: the checkpoint carries no vocabulary (text embeddings of its "
                                "actions and species), so it cannot predict on its own")
        vocab = self.ckpt.vocab or {}
        self.actions = list(vocab.get("actions") or [f"action {i}" for i in range(head.vocab.num_actions)])
        self.species_names = vocab.get("species")
        self.inputs = prediction_inputs(head.inputs, self.cfg, named=bool(species), predict=predict_species)
        self.named: Tensor | None = None  # the species the user named, multi-hot
        if self.inputs.species == "annotated":
            if self.species_names is None:
                raise AnimClipError("this checkpoint records no species names, so --species cannot name one; "
                                    "use --predict-species")
            self.named = species_vector(species, self.species_names)
        self.species_note = species_note(head.inputs, self.inputs, self.cfg.species.model, predict_species)
        self.species_predictor, self.species_weights = None, None
        if self.inputs.species == "predictor":
            predictor, self.species_weights = species_predictor(self.cfg.species, self.species_names or [])
            self.species_predictor = predictor.to(self.device).eval()
        self.head = head.to(self.device).eval()
        self.tower = tower.to(self.device).eval()
        self.encoder = FrameEncoder(self.tower, self.device, self.cfg, self.species_predictor)
        self.num_frames = head.dims["num_frames"]
        self.fallbacks = FallbackNotice()

    def describe(self) -> dict[str, Any]:
        """What produced the scores, for the JSON file."""
        s = self.cfg.sampling
        return {
            "checkpoint": str(self.ckpt.path), "kind": self.ckpt.kind,
            "backbone": {"model": self.cfg.backbone.model, "weights": self.weights},
            "views": {"frames": self.num_frames, "clips": s.test_clips, "crops": s.test_crops, "image_size": s.image_size},
            "decoder": s.decoder,
            "actions": self.actions,
            "species_source": self.inputs.source, "species_note": self.species_note,
            "species_predictor": None if self.species_weights is None else
            {"model": self.cfg.species.model, "weights": self.species_weights.pretrained or "random"},
        }

    def decode(self, video: VideoFile, first: int, stop: int, index: int) -> DecodedClip:
        """The test views of frames ``[first, stop)``, every needed frame decoded once."""
        s = self.cfg.sampling
        views = eval_views(stop - first, video.height, video.width, self.num_frames, s.test_clips, s.test_crops,
                           s.image_size, s.resize)
        return decode_views(video, index, views, first)

    def given(self, features: FrameFeatures) -> Tensor | None:
        """The species vector every view of a segment is given: the species named, or the species
        predictor's probabilities averaged over the views; None when the head predicts them itself
        or takes none."""
        vector = features.species.mean(0) if self.species_predictor is not None else self.named
        return None if vector is None else vector.to(self.device).expand(features.cls.shape[0], -1)

    def encode(self, decoded: Iterable[DecodedClip]) -> Iterator[tuple[FrameFeatures, Tensor | None]]:
        """Each decoded segment's features, and the species vector ``(A,)`` its views are given."""
        for _, features in self.encoder.encode(decoded):
            given = self.given(features)
            yield features, None if given is None else given[0]

    def score(self, features: FrameFeatures) -> ViewScores:
        """Every view of one segment through the head, given :meth:`given`'s species."""
        return score_views(self.head, features, self.given(features), self.inputs, self.cfg.runtime.precision,
                           self.cfg.eval.scores)
