"""Text feature refinement: a 2-layer GCN over the species–action graph (docs/method.md §2.6).

Release form, per clip b with species vector ``s_b``::

    X_b = [s_b ⊙ T_ani ; T_act]             (A+C, D)
    H_b = LN1(φ1(Â X_b W1))                  (A+C, h)
    T'_b = LN2(φ2(Â H_b W2))[A:]             (C, D)   replaces the action text (no residual)

with Â binary, symmetric, self-loops, un-normalised; W ~ N(0, 1) without bias; φ = LeakyReLU(0.1)
on a layer whose output is not wider than its input (the release's rule: layer 1 at D=512).

The ``normalized`` variant (an ablation, docs/method.md D15) uses Ã = D^-1/2 Â D^-1/2 (degrees of Â,
self-loops included) and a residual ``T'_b = T_act + LN2(φ2(Ã H_b W2))[A:]`` whose LN2 gain starts
at zero, so the refinement starts as the identity and CLIP's text features are kept at step 0.

Fast form. The graph is bipartite, so ``X W1`` splits into constants ``P_ani = T_ani W1`` and
``P_act = T_act W1``, and a clip changes the graph state only where a species is present:
layer-1 species row i gets ``s_b[i] P_ani[i]`` added, action rows k get ``Σ_i Â[k,i] s_b[i] P_ani[i]``.
The "no species present" state (all rows, both layers) is computed once per batch; each clip then
corrects only the rows its species touch (a species, its actions), by gather/scatter over the
non-zero entries of ``s``. This is exact for soft species vectors too (mixup, predicted species).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anim_clip.errors import AnimClipError

GCN_HIDDEN = 256  # the release's hidden width, fixed whatever the embedding width


class BipartiteGraph(nn.Module):
    """The adjacency as the constant blocks the fast refinement needs, built once.

    ``adjacency`` (A+C, A+C): species nodes first. It is stored (binary, in checkpoints); the
    propagation weights (raw or normalised) and the species-to-action edge lists are derived
    from it here, and again whenever a state dict is loaded.
    """

    def __init__(self, adjacency: Tensor, num_species: int, *, normalized: bool = False):
        super().__init__()
        adjacency = torch.as_tensor(adjacency, dtype=torch.float32)
        if adjacency.ndim != 2 or adjacency.shape[0] != adjacency.shape[1] or adjacency.shape[0] < num_species:
            raise AnimClipError(
                f"adjacency must be square (A+C, A+C) with A={num_species}, got {tuple(adjacency.shape)}"
            )
        self.num_species = num_species
        self.normalized = normalized
        self.register_buffer("adjacency", adjacency)
        self._derive()
        self.register_load_state_dict_post_hook(lambda module, _: module._derive())

    @property
    def num_actions(self) -> int:
        return self.adjacency.shape[0] - self.num_species

    def _derive(self) -> None:
        adj, a = self.adjacency, self.num_species
        for block, what in ((adj[:a, :a], "species–species"), (adj[a:, a:], "action–action")):
            if bool((block - torch.diag(torch.diagonal(block))).any()):
                raise AnimClipError(f"the refinement graph must be bipartite: it has {what} edges")
        weights = adj
        if self.normalized:
            degree = adj.sum(dim=1)
            scale = torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), torch.zeros_like(degree))
            weights = scale[:, None] * adj * scale[None, :]
        diagonal = torch.diagonal(weights)
        species_to_action = weights[a:, :a]  # (C, A): row = receiving action, column = sending species
        pairs = species_to_action.T.nonzero()  # (E, 2) (species, action), grouped by species
        indptr = torch.zeros(a + 1, dtype=torch.long, device=adj.device)
        indptr[1:] = torch.cumsum(torch.bincount(pairs[:, 0], minlength=a), 0)
        derived = {
            "species_self": diagonal[:a],
            "action_self": diagonal[a:],
            "species_to_action": species_to_action.contiguous(),
            "action_to_species": weights[:a, a:].contiguous(),
            "edge_indptr": indptr,
            "edge_action": pairs[:, 1].contiguous(),
            "edge_weight": species_to_action.T[pairs[:, 0], pairs[:, 1]],
        }
        for name, value in derived.items():
            self.register_buffer(name, value, persistent=False)

    def species_edges(self, species: Tensor) -> tuple[Tensor, Tensor]:
        """For entries ``species (n,)``: ``(entry, edge)``, one pair per action edge of each entry."""
        start = self.edge_indptr[species]
        count = self.edge_indptr[species + 1] - start
        entry = torch.repeat_interleave(torch.arange(len(species), device=species.device), count)
        first = torch.cumsum(count, 0) - count
        edge = start[entry] + torch.arange(len(entry), device=species.device) - first[entry]
        return entry, edge


class GraphConv(nn.Module):
    """Weight ``(in, out)`` ~ N(0, 1), no bias; ``post`` applies φ then the LayerNorm."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_dim, out_dim))
        self.norm = nn.LayerNorm(out_dim)
        self.activate = out_dim <= in_dim

    def post(self, pre: Tensor) -> Tensor:
        return self.norm(F.leaky_relu(pre, 0.1) if self.activate else pre)


class GraphRefinement(nn.Module):
    """``(T_act, T_ani, s) -> (B, C, D)`` refined action embeddings (module docstring for the maths)."""

    def __init__(self, embed_dim: int, hidden: int = GCN_HIDDEN, *, residual: bool = False):
        super().__init__()
        self.layers = nn.ModuleList([GraphConv(embed_dim, hidden), GraphConv(hidden, embed_dim)])
        self.residual = residual
        if residual:
            nn.init.zeros_(self.layers[1].norm.weight)

    def forward(self, action_text: Tensor, species_text: Tensor, species: Tensor, graph: BipartiteGraph) -> Tensor:
        first, second = self.layers
        num_clips, (num_actions, dim), hidden = species.shape[0], action_text.shape, first.weight.shape[1]
        p_species = species_text @ first.weight
        p_action = action_text @ first.weight

        # The state of a clip with no species present, shared by every clip.
        pre_species = graph.action_to_species @ p_action
        pre_action = graph.action_self[:, None] * p_action
        h_species, h_action = first.post(pre_species), first.post(pre_action)
        pre_out = (graph.species_to_action @ h_species + graph.action_self[:, None] * h_action) @ second.weight

        # Corrections where s_b[i] != 0: species row i of layer 1 ...
        clip, sp = species.nonzero(as_tuple=True)
        shift = species[clip, sp][:, None] * take(p_species, sp)
        d_species = first.post(take(pre_species, sp) + graph.species_self[sp, None] * shift) - take(h_species, sp)
        # ... and the action rows its edges reach: layer-1 input (shift) and layer-2 input (d_species).
        entry, edge = graph.species_edges(sp)
        rows, slot = torch.unique(clip[entry] * num_actions + graph.edge_action[edge], return_inverse=True)
        message = torch.cat([shift, d_species], dim=1)
        weights = graph.edge_weight[edge].to(message.dtype)
        scatter = torch.sparse_coo_tensor(
            torch.stack([slot, entry]), weights, (len(rows), len(sp)), check_invariants=False
        )
        with torch.autocast(message.device.type, enabled=False):  # autocast has no sparse bf16 backward
            acc = torch.sparse.mm(scatter, message)
        action = rows % num_actions
        d_action = first.post(take(pre_action, action) + acc[:, :hidden]) - take(h_action, action)
        delta = (acc[:, hidden:] + graph.action_self[action, None] * d_action) @ second.weight

        out = second.post(pre_out).repeat(num_clips, 1)
        out.index_copy_(0, rows, second.post(take(pre_out, action) + delta).to(out.dtype))
        out = out.view(num_clips, num_actions, dim)
        return action_text + out if self.residual else out


def take(rows: Tensor, index: Tensor) -> Tensor:
    """``rows[index]`` along the first axis, as ``index_select``: its backward sums repeated rows
    in a fixed order, where indexing's backward adds them in parallel, in an order that varies
    from run to run on a multi-core CPU (and made two identical training runs differ)."""
    return rows.index_select(0, index)


def adjacency_from_edges(edges: Tensor, num_nodes: int) -> Tensor:
    """Dense binary ``(N, N)`` adjacency from an ``(E, 2)`` edge list (the release's ``edges``)."""
    edges = torch.as_tensor(edges, dtype=torch.long)
    if edges.ndim != 2 or edges.shape[1] != 2 or (edges.numel() and int(edges.max()) >= num_nodes):
        raise AnimClipError(f"edges must be (E, 2) node pairs below {num_nodes}, got {tuple(edges.shape)}")
    adjacency = torch.zeros(num_nodes, num_nodes, device=edges.device)
    adjacency[edges[:, 0], edges[:, 1]] = 1.0
    return adjacency
