"""The faiss inner-product index over the prompt space, and where it runs.

Vectors are L2-normalised, so inner product = cosine. ``flat`` is exact and the default; ``ivf``
and ``hnsw`` trade a little recall for speed on large spaces (AK: about 125 000 rows). Every kind
stores the raw vectors (IVFFlat, HNSWFlat), so the space can always be read back exactly.

The index runs on the GPU exactly when faiss reports one (a faiss-gpu build with a visible device)
and the kind has a GPU implementation: faiss has none for HNSW, which stays on the CPU.
"""

from __future__ import annotations

import math
from typing import Literal

import faiss
import numpy as np

from anim_clip.errors import AnimClipError
from anim_clip.ui import console

IndexKind = Literal["flat", "ivf", "hnsw"]
INDEX_KINDS: tuple[IndexKind, ...] = ("flat", "ivf", "hnsw")
Device = Literal["cpu", "gpu"]

HNSW_M = 32  # graph degree: faiss's usual choice for 512-d vectors
# Candidates per query. On an AK-sized space recall@10 of prompt queries is 0.95 here (the build is
# not deterministic: 0.975 in another run) and no better than 0.98 at efSearch 1024; queries far from
# every prompt (random directions, standing in for a clip's video embedding) get 0.18, since an
# action's prompts for 897 species are near-duplicates (benchmarks/RESULTS.md, "Prompt-space analysis
# with faiss"; benchmarks/results/faiss.json): HNSW is for prompt-to-prompt queries.
HNSW_EF_SEARCH = 128
IVF_POINTS_PER_LIST = 39  # faiss warns below this many training points per centroid
GPU_MAX_K = 2048  # faiss's GPU k-selection limit


def ivf_lists(rows: int) -> int:
    """About 4·sqrt(n) lists, as the faiss wiki advises, with enough points to train each."""
    return max(1, min(round(4 * math.sqrt(rows)), rows // IVF_POINTS_PER_LIST))


def ivf_probes(lists: int) -> int:
    """sqrt(lists) lists visited per query: recall@10 of 0.997 for prompt and 0.996 for clip-like
    queries on an AK-sized space (38 of 1418 lists; benchmarks/RESULTS.md, benchmarks/results/faiss.json)."""
    return max(1, min(lists, math.ceil(math.sqrt(lists))))


def search_device(kind: IndexKind, num_gpus: int) -> Device:
    """``gpu`` when faiss sees a GPU and has a GPU version of ``kind``; pass ``faiss.get_num_gpus()``."""
    return "gpu" if num_gpus > 0 and kind != "hnsw" else "cpu"


HNSW_NOTE = ("HNSW finds prompt neighbours well but misses many for a clip's video embedding, which lies far "
             "from every prompt; build with --index flat or ivf for clip queries")


def device_note(kind: IndexKind, num_gpus: int) -> str:
    """The log line that says where the index runs, and why."""
    if search_device(kind, num_gpus) == "gpu":
        return f"faiss: {kind} index on the GPU ({num_gpus} GPU{'s' if num_gpus > 1 else ''} visible to faiss)"
    if num_gpus > 0:
        return f"faiss: {kind} index on the CPU (faiss has no GPU HNSW; use --index flat or ivf for the GPU)"
    return f"faiss: {kind} index on the CPU (faiss sees no GPU)"


def empty_index(kind: IndexKind, dim: int, rows: int) -> faiss.Index:
    """An untrained CPU index of ``kind`` for ``rows`` vectors of ``dim``, with its search settings."""
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "ivf":
        lists = ivf_lists(rows)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = ivf_probes(lists)
        return index
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return index
    raise AnimClipError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")


def index_kind(index: faiss.Index) -> IndexKind:
    for kind, cls in (("flat", faiss.IndexFlatIP), ("ivf", faiss.IndexIVFFlat), ("hnsw", faiss.IndexHNSWFlat)):
        if isinstance(index, cls):
            return kind
    raise AnimClipError(f"unsupported faiss index {type(index).__name__}")


def index_settings(index: faiss.Index) -> dict[str, int]:
    """The parameters that decide recall, for the record beside the index."""
    kind = index_kind(index)
    if kind == "ivf":
        return {"lists": int(index.nlist), "probes": int(index.nprobe)}
    if kind == "hnsw":
        return {"m": HNSW_M, "ef_search": int(index.hnsw.efSearch)}
    return {}


class PromptIndex:
    """A CPU index (what is saved) and the index searches go to: a GPU copy when one is used."""

    def __init__(self, index: faiss.Index, num_gpus: int | None = None, *, quiet: bool = False):
        self.cpu = index
        self.kind = index_kind(index)
        num_gpus = faiss.get_num_gpus() if num_gpus is None else num_gpus
        self.device = search_device(self.kind, num_gpus)
        self.searcher = faiss.index_cpu_to_all_gpus(index) if self.device == "gpu" else index
        if not quiet:
            console.print(device_note(self.kind, num_gpus), highlight=False)

    @classmethod
    def build(cls, vectors: np.ndarray, kind: IndexKind = "flat", num_gpus: int | None = None,
              *, quiet: bool = False) -> PromptIndex:
        """Train (IVF: k-means, on the GPU when used) and fill an index with ``vectors``."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        num_gpus = faiss.get_num_gpus() if num_gpus is None else num_gpus
        index = empty_index(kind, vectors.shape[1], len(vectors))
        if search_device(kind, num_gpus) == "gpu":
            work = faiss.index_cpu_to_all_gpus(index)
            work.train(vectors)
            work.add(vectors)
            index = faiss.index_gpu_to_cpu(work)
        else:
            index.train(vectors)
            index.add(vectors)
        if kind == "ivf":
            index.make_direct_map()  # lets reconstruct_n read the vectors back
        return cls(index, num_gpus, quiet=quiet)

    @property
    def rows(self) -> int:
        return int(self.cpu.ntotal)

    def vectors(self) -> np.ndarray:
        """``(N, D)`` the stored vectors, exactly as added."""
        return self.cpu.reconstruct_n(0, self.rows)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(Q, k)`` cosines (best first) and row ids; ids are -1 where fewer than k were found."""
        k = min(k, self.rows)
        if self.device == "gpu" and k > GPU_MAX_K:
            raise AnimClipError(f"faiss on the GPU returns at most {GPU_MAX_K} neighbours, {k} were asked")
        return self.searcher.search(np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.cpu.d), k)
