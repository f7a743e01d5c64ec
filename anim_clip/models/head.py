"""The Animal-CLIP head: frame features + species vector -> logits (docs/method.md Appendix A).

The same class is trained from the feature cache and sits inside the end-to-end model, so a
checkpoint moves between the two modes.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anim_clip.config import ModelConfig
from anim_clip.errors import AnimClipError
from anim_clip.models.features import FrameFeatures, HeadOutput
from anim_clip.models.graph_refine import GCN_HIDDEN, BipartiteGraph, GraphRefinement, take
from anim_clip.models.inputs import HeadInputs
from anim_clip.models.mit import MultiFrameIntegration
from anim_clip.models.prompts import PromptGenerator, VideoSpecificPrompt


class HeadVocabulary(nn.Module):
    """What the head conditions on: raw (un-normalised, pooled) text embeddings of the C actions
    and A species, and the species–action graph. Constants: buffers, saved, never trained."""

    def __init__(self, action_text: Tensor, species_text: Tensor, adjacency: Tensor, *, normalized_graph: bool = False):
        super().__init__()
        if action_text.ndim != 2 or species_text.ndim != 2 or action_text.shape[1] != species_text.shape[1]:
            raise AnimClipError(
                "text embeddings must be (C, D) and (A, D), "
                f"got {tuple(action_text.shape)} and {tuple(species_text.shape)}"
            )
        nodes = action_text.shape[0] + species_text.shape[0]
        if tuple(adjacency.shape) != (nodes, nodes):
            raise AnimClipError(
                f"the species–action graph has {adjacency.shape[0]} nodes, the vocabulary "
                f"{species_text.shape[0]} species + {action_text.shape[0]} actions"
            )
        self.register_buffer("action_text", action_text.detach().float())
        self.register_buffer("species_text", species_text.detach().float())
        self.graph = BipartiteGraph(adjacency, species_text.shape[0], normalized=normalized_graph)

    @property
    def num_actions(self) -> int:
        return self.action_text.shape[0]

    @property
    def num_species(self) -> int:
        return self.species_text.shape[0]


class AnimalCLIPHead(nn.Module):
    """MIT, species–action graph refinement, category-specific text and video prompts, and
    optionally X-CLIP's video-specific prompt; logits = ``logit_scale`` × cosine.

    ``inputs`` (:class:`~anim_clip.models.inputs.HeadInputs`) says what it was trained to take:
    ``forward(features, species)`` uses ``species (B, A)`` as given (annotated, or the species
    predictor's probabilities), or replaces it by its own zero-shot guess from the frames, or by
    zeros. Scoring may resolve the species vector with other inputs (a user's species at predict
    time) through :meth:`species_vector`; the head itself never changes. The vocabulary (text
    embeddings + graph) can be given here, set later (:meth:`set_vocabulary`), or passed per call
    (release checkpoints carry none: the release re-encodes its text and graph at every call).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        inputs: HeadInputs,
        embed_dim: int,
        num_frames: int,
        adjacency: Tensor | None = None,
        action_text: Tensor | None = None,
        species_text: Tensor | None = None,
        patch_width: int | None = None,
        gcn_hidden: int = GCN_HIDDEN,
    ):
        super().__init__()
        if inputs.patches and patch_width is None:
            raise AnimClipError("video_specific_prompt needs the patch-token width (patch_width)")
        self.cfg = dataclasses.replace(cfg)
        self.inputs = inputs
        self.dims = {"embed_dim": embed_dim, "num_frames": num_frames, "patch_width": patch_width, "gcn_hidden": gcn_hidden}
        self.mit = MultiFrameIntegration(num_frames, embed_dim, cfg.mit_layers)
        self.refine = (
            GraphRefinement(embed_dim, gcn_hidden, residual=cfg.refine_graph == "normalized") if cfg.refine else None
        )
        self.text_prompt = self._category_prompt() if cfg.text_prompt else None
        self.video_prompt = self._category_prompt() if cfg.video_prompt else None
        self.video_specific_prompt = (
            VideoSpecificPrompt(patch_width, embed_dim, cfg.prompt_layers, cfg.prompts_alpha) if inputs.patches else None
        )
        self.vocab: HeadVocabulary | None = None
        given = [t is not None for t in (adjacency, action_text, species_text)]
        if all(given):
            self.set_vocabulary(action_text, species_text, adjacency)
        elif any(given):
            raise AnimClipError("give all of adjacency, action_text and species_text, or none")

    def _category_prompt(self) -> PromptGenerator:
        cfg = self.cfg
        return PromptGenerator(self.dims["embed_dim"], cfg.prompt_layers, cfg.prompts_alpha, single_token_context=True)

    def make_vocabulary(self, action_text: Tensor, species_text: Tensor, adjacency: Tensor) -> HeadVocabulary:
        normalized = self.cfg.refine_graph == "normalized"
        vocab = HeadVocabulary(action_text, species_text, adjacency, normalized_graph=normalized)
        if vocab.action_text.shape[1] != self.dims["embed_dim"]:
            raise AnimClipError(
                f"text embeddings are {vocab.action_text.shape[1]}-d, the head {self.dims['embed_dim']}-d"
            )
        return vocab

    def set_vocabulary(self, action_text: Tensor, species_text: Tensor, adjacency: Tensor) -> None:
        device = next(itertools.chain(self.parameters(), self.buffers()), action_text).device
        self.vocab = self.make_vocabulary(action_text, species_text, adjacency).to(device)

    def _vocab(self, vocab: HeadVocabulary | None) -> HeadVocabulary:
        vocab = vocab if vocab is not None else self.vocab
        if vocab is None:
            raise AnimClipError("the head has no vocabulary: call set_vocabulary(action_text, species_text, adjacency)")
        return vocab

    def species_vector(self, cls: Tensor, species: Tensor | None, inputs: HeadInputs | None = None,
                       vocab: HeadVocabulary | None = None) -> Tensor:
        """``(B, A)``: the species vector the head conditions on under ``inputs`` (default: its own,
        :attr:`inputs`): its zero-shot guess from the frames ``cls (B, T, D)``, else
        :meth:`given_species`."""
        inputs = inputs or self.inputs
        if inputs.species != "zero-shot":
            return self.given_species(species, cls.shape[0], inputs, vocab).to(cls.dtype)
        vocab = self._vocab(vocab)
        # Zero-shot CLIP on the frame-mean CLS embedding; a fixed predictor, never trained.
        with torch.no_grad():
            video = F.normalize(cls.mean(dim=1), dim=-1)
            logits = self.cfg.logit_scale * video @ F.normalize(vocab.species_text, dim=-1).T
            return logits.softmax(dim=-1)

    def given_species(self, species: Tensor | None, count: int, inputs: HeadInputs | None = None,
                      vocab: HeadVocabulary | None = None) -> Tensor:
        """``(count, A)``: zeros when ``inputs`` (default: the head's own) take no species, else the
        given species vectors as they are (the annotation, a user's species, a predictor's
        probabilities), checked to be ``(count, A)``."""
        vocab = self._vocab(vocab)
        if (inputs or self.inputs).species == "none":
            return vocab.species_text.new_zeros(count, vocab.num_species)
        if species is None or tuple(species.shape) != (count, vocab.num_species):
            got = None if species is None else tuple(species.shape)
            raise AnimClipError(f"species vector must be (B={count}, A={vocab.num_species}), got {got}")
        return species

    def conditioned_text(self, species: Tensor, vocab: HeadVocabulary | None = None) -> Tensor:
        """The text half: ``(S, C, D)`` un-normalised class embeddings for species vectors ``(S, A)``,
        graph refinement then the category-specific text prompt on the animal token ``s @ T_ani``.
        It depends on the species vector alone, so callers compute it once per distinct vector."""
        vocab = self._vocab(vocab)
        species = species.to(vocab.species_text.dtype)
        if self.refine is not None:
            text = self.refine(vocab.action_text, vocab.species_text, species, vocab.graph)
        else:
            text = vocab.action_text.expand(species.shape[0], -1, -1)
        if self.text_prompt is not None:
            text = self.text_prompt(text, (species @ vocab.species_text)[:, None])
        return text

    def class_embeddings(self, species: Tensor, vocab: HeadVocabulary | None = None) -> Tensor:
        """``(S, C, D)`` L2-normalised class embeddings of species vectors ``(S, A)`` (the
        "prompt space"; the video-specific prompt, which needs a video, is not applied)."""
        return F.normalize(self.conditioned_text(species, vocab), dim=-1)

    def video_embedding(self, features: FrameFeatures, species: Tensor, vocab: HeadVocabulary | None = None) -> Tensor:
        """The video half: ``(B, D)`` L2-normalised embedding of each view, MIT then the
        category-specific video prompt; ``species (B, A)`` as :meth:`species_vector` resolved it."""
        vocab = self._vocab(vocab)
        video = self.mit(features.cls.to(vocab.action_text.dtype))
        if self.video_prompt is not None:
            video = self.video_prompt(video[:, None], (species.to(video.dtype) @ vocab.species_text)[:, None])[:, 0]
        return F.normalize(video, dim=-1)

    def score(self, features: FrameFeatures, species: Tensor, text: Tensor, index: Tensor,
              vocab: HeadVocabulary | None = None) -> HeadOutput:
        """Logits of views ``features`` whose class embeddings are ``text[index]``: ``text (U, C, D)``
        from :meth:`conditioned_text` of distinct species vectors, ``index (B,)`` each view's row.
        X-CLIP's video-specific prompt, which reads the view's patch tokens, applies here."""
        video = self.video_embedding(features, species, vocab)
        rows = torch.arange(len(index), device=index.device)
        if self.video_specific_prompt is not None:
            if features.patches is None:
                raise AnimClipError(
                    "video_specific_prompt needs patch tokens: extract the cache with patches, or run end to end"
                )
            text, index = self.video_specific_prompt(take(text, index), features.patches), rows
        else:  # the rows a batch uses are few and adjacent: score against them, not a per-view copy
            first = int(index.min())
            text, index = text[first:int(index.max()) + 1], index - first
        text = F.normalize(text, dim=-1).to(video.dtype)
        logits = self.cfg.logit_scale * torch.einsum("bd,ucd->buc", video, text)[rows, index]
        return HeadOutput(logits=logits, video=video, text=text, index=index)

    def forward(
        self, features: FrameFeatures, species: Tensor | None, vocab: HeadVocabulary | None = None
    ) -> HeadOutput:
        """Logits of a batch: the text half once per distinct species vector of the batch (exact:
        clips sharing species share the computation, and its gradient is theirs summed)."""
        vocab = self._vocab(vocab)
        species = self.species_vector(features.cls.to(vocab.action_text.dtype), species, vocab=vocab)
        distinct, index = torch.unique(species, dim=0, return_inverse=True)
        return self.score(features, species, self.conditioned_text(distinct, vocab), index, vocab)
