"""The bipartite species–action graph that the refinement module convolves over (docs/method.md §2.6).

Node order follows the release: species nodes ``0..A-1`` (species-list order), then action nodes
``A..A+C-1``. The adjacency is binary, symmetric, with a self-loop on every node, and it is a
constant: it is built once here, never in a forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class SpeciesActionGraph:
    """Which actions each species performs."""

    species_actions: tuple[frozenset[int], ...]
    num_actions: int

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, int]], num_species: int, num_actions: int) -> SpeciesActionGraph:
        per_species: list[set[int]] = [set() for _ in range(num_species)]
        for s, a in pairs:
            per_species[s].add(a)
        return cls(tuple(frozenset(a) for a in per_species), num_actions)

    @classmethod
    def from_lists(cls, lists: Iterable[Iterable[int]], num_actions: int) -> SpeciesActionGraph:
        return cls(tuple(frozenset(a) for a in lists), num_actions)

    @property
    def num_species(self) -> int:
        return len(self.species_actions)

    @property
    def num_nodes(self) -> int:
        return self.num_species + self.num_actions

    def pairs(self) -> set[tuple[int, int]]:
        return {(s, a) for s, acts in enumerate(self.species_actions) for a in acts}

    def can_perform(self) -> np.ndarray:
        """Boolean ``(A, C)``: species s is known to perform action a."""
        mask = np.zeros((self.num_species, self.num_actions), dtype=bool)
        for s, acts in enumerate(self.species_actions):
            mask[s, sorted(acts)] = True
        return mask

    def adjacency(self) -> np.ndarray:
        """Binary symmetric ``(A+C, A+C)`` float32 adjacency with self-loops, un-normalised."""
        A = self.num_species
        adj = np.eye(self.num_nodes, dtype=np.float32)
        mask = self.can_perform()
        adj[:A, A:] = np.maximum(adj[:A, A:], mask)
        adj[A:, :A] = np.maximum(adj[A:, :A], mask.T)
        return adj

    def edges(self) -> np.ndarray:
        """``(E, 2)`` int64 edge list (both directions + self-loops), sorted by (source, target)."""
        return np.argwhere(self.adjacency() > 0).astype(np.int64)


@dataclass(frozen=True)
class GraphComparison:
    """How two graphs over the same vocabularies differ, species by species."""

    identical_species: int
    num_species: int
    only_in_first: int
    only_in_second: int

    def summary(self) -> str:
        return (
            f"{self.identical_species}/{self.num_species} species with identical action lists; "
            f"{self.only_in_first} pairs only in the first graph, {self.only_in_second} only in the second"
        )


def compare_graphs(first: SpeciesActionGraph, second: SpeciesActionGraph) -> GraphComparison:
    if (first.num_species, first.num_actions) != (second.num_species, second.num_actions):
        raise ValueError("graphs are over different vocabularies")
    a, b = first.pairs(), second.pairs()
    same = sum(x == y for x, y in zip(first.species_actions, second.species_actions))
    return GraphComparison(same, first.num_species, len(a - b), len(b - a))
