"""The category-specific prompt space of a trained head: its L2-normalised class embeddings under
every condition.

A *condition* is a set of species the head conditions on. Condition 0 is the empty set: the
**unconditioned** prompts are ``head.class_embeddings(zeros)``, what the head gives a clip with no
species: every species node of the graph is zeroed and the animal token is zero (the text prompt
still adds its learnt response to a zero token, so these are not the raw text embeddings); with
``species_source=none`` they are all the head ever uses. Conditions 1..A are the single species in
vocabulary order; further conditions are multi-species sets that occur in a dataset. Rows are
condition-major, ``row = condition * C + action``, so a condition's prompts are one contiguous
block and the id map is ``(row // C, row % C)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from anim_clip.errors import AnimClipError
from anim_clip.models.head import AnimalCLIPHead, HeadVocabulary

BUILD_BATCH = 64  # conditions per call of the head: bounds the (B, A+C, D) graph state in memory


@dataclass
class PromptSpace:
    """``vectors (K·C, D)`` float32, unit rows; ``conditions[k]`` the species ids of condition k."""

    vectors: np.ndarray
    conditions: list[tuple[int, ...]]
    actions: list[str]
    species: list[str]
    can_perform: np.ndarray  # (A, C) bool: the graph the head was trained with

    def __post_init__(self) -> None:
        self._lookup = {c: k for k, c in enumerate(self.conditions)}

    @property
    def num_actions(self) -> int:
        return len(self.actions)

    @property
    def rows(self) -> int:
        return len(self.vectors)

    def block(self, condition: int) -> np.ndarray:
        """``(C, D)`` the prompts of one condition."""
        c = self.num_actions
        return self.vectors[condition * c : (condition + 1) * c]

    def blocks(self) -> np.ndarray:
        """``(K, C, D)`` a view of every condition's prompts."""
        return self.vectors.reshape(len(self.conditions), self.num_actions, -1)

    def row(self, condition: int, action: int) -> int:
        return condition * self.num_actions + action

    def id_map(self) -> tuple[np.ndarray, np.ndarray]:
        """``(condition, action)`` of every row."""
        condition, action = np.divmod(np.arange(self.rows), self.num_actions)
        return condition, action

    def species_column(self) -> np.ndarray:
        """Per row: the species id of a single-species condition, -1 unconditioned, -2 a species set."""
        per_condition = np.array([c[0] if len(c) == 1 else (-1 if not c else -2) for c in self.conditions])
        return np.repeat(per_condition, self.num_actions)

    def condition_of(self, species: Sequence[int]) -> int | None:
        """The condition of a species set, or None when the space does not hold it."""
        return self._lookup.get(tuple(sorted(species)))

    def label(self, condition: int) -> str:
        names = [self.species[s] for s in self.conditions[condition]]
        return " + ".join(names) if names else "(no species)"

    def performable(self, condition: int) -> np.ndarray:
        """``(C,)`` actions some species of the condition performs; all True unconditioned."""
        species = list(self.conditions[condition])
        return self.can_perform[species].any(0) if species else np.ones(self.num_actions, dtype=bool)


def head_vocab(head: AnimalCLIPHead) -> HeadVocabulary:
    if head.vocab is None:
        raise AnimClipError("the checkpoint's head carries no vocabulary (text embeddings and graph): "
                            "its prompt space cannot be built")
    return head.vocab


def can_perform_of(head: AnimalCLIPHead) -> np.ndarray:
    """``(A, C)`` bool from the adjacency the head carries (species rows, action columns)."""
    graph = head_vocab(head).graph
    return (graph.adjacency[: graph.num_species, graph.num_species :] > 0).cpu().numpy()


def space_conditions(num_species: int, species_sets: Iterable[Sequence[int]] = ()) -> list[tuple[int, ...]]:
    """No species, each species alone, then the distinct multi-species sets given (sorted)."""
    sets = {tuple(sorted({int(s) for s in group})) for group in species_sets}
    return [(), *((s,) for s in range(num_species)), *sorted(s for s in sets if len(s) > 1)]


def species_matrix(conditions: Sequence[tuple[int, ...]], num_species: int) -> torch.Tensor:
    """``(K, A)`` multi-hot species vectors of the conditions."""
    rows = [k for k, c in enumerate(conditions) for _ in c]
    cols = [s for c in conditions for s in c]
    out = torch.zeros(len(conditions), num_species)
    out[rows, cols] = 1.0
    return out


@torch.inference_mode()
def build_space(head: AnimalCLIPHead, actions: Sequence[str], species: Sequence[str],
                species_sets: Iterable[Sequence[int]] = (), *, batch: int = BUILD_BATCH) -> PromptSpace:
    """Every condition's class embeddings, ``batch`` conditions per call of ``head.class_embeddings``."""
    vocab = head_vocab(head)
    was_training = head.training
    head.eval()
    conditions = space_conditions(vocab.num_species, species_sets)
    multi_hot = species_matrix(conditions, vocab.num_species)
    C, D = vocab.num_actions, vocab.action_text.shape[1]
    vectors = np.empty((len(conditions) * C, D), dtype=np.float32)
    device = vocab.action_text.device
    for start in range(0, len(conditions), batch):
        part = multi_hot[start : start + batch].to(device)
        vectors[start * C : (start + len(part)) * C] = head.class_embeddings(part).float().reshape(-1, D).cpu().numpy()
    head.train(was_training)
    return PromptSpace(vectors, conditions, list(actions), list(species), can_perform_of(head))
