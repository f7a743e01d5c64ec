"""``anim-clip analyze``: thin typer commands over :mod:`anim_clip.analysis`. Each prints tables
and writes its JSON (by default into the prompt-space folder beside the checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from anim_clip.cli.options import Split, Weights
from anim_clip.errors import AnimClipError
from anim_clip.ui import console

analyze_app = typer.Typer(
    help="Inspect the category-specific prompt space of a trained run with faiss: nearest actions, confusable "
    "pairs, how species move an action's prompt, single clips, and whether confusions follow prompt neighbours.",
    no_args_is_help=True,
)

IndexKind = Literal["flat", "ivf", "hnsw"]  # analysis.index.IndexKind, spelt here so --help imports no faiss

RunArg = Annotated[Path, typer.Argument(help="A run directory (its last.pt, or best.pt with --weights best) or a checkpoint file (head or end-to-end).")]
WeightsOpt = Annotated[Weights, typer.Option(help="In a run directory: last or best.")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Where the JSON report goes (default: <checkpoint>.prompt-space/<command>.json).")]
SpeciesOpt = Annotated[Optional[str], typer.Option("--species", help="A species, by name as in the checkpoint's vocabulary (or its id).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="Torch device for the model, e.g. cuda:1 or cpu (default: the GPU when there is one).")]


def _open(run: Path, weights: str):
    from anim_clip.analysis.store import open_space

    return open_space(run, weights)


def _emit(stored, name: str, report: dict[str, Any], tables: list, json_out: Path | None) -> Path:
    from anim_clip.io import atomic_write_json

    for t in tables:
        console.print(t)
    path = atomic_write_json(json_out or stored.directory / f"{name}.json",
                             {"command": name, "checkpoint": str(stored.checkpoint), **report})
    console.print(f"-> {path}", highlight=False, soft_wrap=True)
    return path


def _device(device: str | None):
    import torch

    return torch.device(device) if device else None


def _cached_model(stored, device: str | None):
    """The head and config of a checkpoint whose features can come from a cache."""
    from anim_clip.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(stored.checkpoint)
    if ckpt.kind == "e2e":
        raise AnimClipError(f"{stored.checkpoint}: an end-to-end checkpoint; its fine-tuned features differ from the "
                            "cache's frozen ones, so give a video (--video) instead of a cached clip")
    from anim_clip.analysis.store import checkpoint_head

    return checkpoint_head(ckpt, _device(device)), ckpt.config


@analyze_app.command("build")
def build_cmd(
    run: RunArg,
    index: Annotated[IndexKind, typer.Option("--index", help="faiss index: flat (exact), ivf or hnsw (approximate, for large spaces).")] = "flat",
    cache: Annotated[Optional[Path], typer.Option(help="A feature cache: also add the multi-species sets that occur in its splits as conditions.")] = None,
    weights: WeightsOpt = "last",
) -> None:
    """Build (or rebuild) the prompt space: every species' conditioned class embeddings and the unconditioned
    ones, in a faiss inner-product index saved beside the checkpoint with its id map."""
    from anim_clip.analysis.index import HNSW_NOTE
    from anim_clip.analysis.store import build_and_save, species_sets_in
    from anim_clip.analysis.tables import space_table
    from anim_clip.runtime.rundir import resolve_checkpoint

    sets = species_sets_in(cache) if cache is not None else None
    stored = build_and_save(resolve_checkpoint(run, weights), index, species_sets=sets,
                            sets_from=None if cache is None else str(cache))
    console.print(space_table(stored.meta, stored.index.device))
    if stored.index.kind == "hnsw":
        console.print(f"[yellow]note:[/] {HNSW_NOTE}", highlight=False, soft_wrap=True)


@analyze_app.command("neighbors")
def neighbors_cmd(
    run: RunArg,
    action: Annotated[str, typer.Argument(help="The action, by name (or id).")],
    species: SpeciesOpt = None,
    k: Annotated[int, typer.Option("-k", min=1, help="Neighbours to list.")] = 10,
    weights: WeightsOpt = "last",
    json_out: JsonOpt = None,
) -> None:
    """The actions nearest to an action within one species (default: unconditioned), and its nearest prompts
    anywhere in the space (any species, any action)."""
    from anim_clip.analysis.queries import neighbors
    from anim_clip.analysis.tables import neighbors_tables

    stored = _open(run, weights)
    report = neighbors(stored, action, species, k)
    _emit(stored, "neighbors", report, neighbors_tables(report), json_out)


@analyze_app.command("confusable")
def confusable_cmd(
    run: RunArg,
    species: SpeciesOpt = None,
    top: Annotated[int, typer.Option(min=1, help="Pairs per species (and overall).")] = 10,
    performable: Annotated[bool, typer.Option("--performable", help="Only pairs of actions that the species performs (species–action graph).")] = False,
    weights: WeightsOpt = "last",
    json_out: JsonOpt = None,
) -> None:
    """The most similar action pairs (prompt cosine) for every species, or one, and overall (mean over species)."""
    from anim_clip.analysis.queries import confusable
    from anim_clip.analysis.tables import confusable_tables

    stored = _open(run, weights)
    report = confusable(stored.space, species, top, performable)
    _emit(stored, "confusable", report, confusable_tables(report), json_out)


@analyze_app.command("spread")
def spread_cmd(
    run: RunArg,
    action: Annotated[Optional[str], typer.Argument(help="One action, by name (or id), for its per-species detail; default: every action.")] = None,
    weights: WeightsOpt = "last",
    json_out: JsonOpt = None,
) -> None:
    """How far an action's prompt moves across species: mean pairwise cosine, cosine to the unconditioned
    prompt, and that drift against the separation between actions (how category-specific the prompt is)."""
    from anim_clip.analysis.queries import spread
    from anim_clip.analysis.tables import spread_tables

    stored = _open(run, weights)
    report = spread(stored.space, action)
    _emit(stored, "spread", report, spread_tables(report), json_out)


@analyze_app.command("clip")
def clip_cmd(
    run: RunArg,
    clip: Annotated[Optional[str], typer.Option("--clip", help="A clip id in the cache (as in the split file), with --cache.")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="The feature cache holding --clip.")] = None,
    split: Annotated[Optional[str], typer.Option(help="The cache split holding --clip (default: search every split).")] = None,
    video: Annotated[Optional[Path], typer.Option("--video", help="A video file instead, run through the predict path (the checkpoint's test views and image tower).")] = None,
    species: Annotated[Optional[list[str]], typer.Option("--species", help="With --video: a species in it (repeatable); default: predicted zero-shot.")] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="Actions and prompts to list.")] = 5,
    device: DeviceOpt = None,
    weights: WeightsOpt = "last",
    json_out: JsonOpt = None,
) -> None:
    """One clip: the model's top actions by logit next to its nearest prompts (its species', and anywhere),
    flagging actions its species cannot perform and wrong predictions."""
    from anim_clip.analysis.clips import clip_from_cache, clip_from_video, clip_report
    from anim_clip.analysis.tables import clip_tables

    if (clip is None) == (video is None):
        raise AnimClipError("give a cached clip (--clip ID --cache CACHE) or a video (--video PATH), one of them")
    stored = _open(run, weights)
    if video is not None:
        from anim_clip.evaluate.scorer import VideoScorer

        scorer = VideoScorer(stored.checkpoint, species=species, predict_species=not species, device=device)
        head, cfg, item = scorer.head, scorer.cfg, clip_from_video(scorer, video)
    else:
        if cache is None:
            raise AnimClipError("--clip needs --cache: the feature cache that holds the clip")
        if species:
            raise AnimClipError("--species applies to --video; a cached clip carries its annotated species")
        head, cfg = _cached_model(stored, device)
        item = clip_from_cache(cache, clip, cfg, head.inputs, split)
    report = clip_report(stored, head, item, cfg, k)
    _emit(stored, "clip", report, clip_tables(report), json_out)
    if stored.index.kind == "hnsw":
        from anim_clip.analysis.index import HNSW_NOTE

        console.print(f"[yellow]note:[/] {HNSW_NOTE}", highlight=False, soft_wrap=True)
    for flag in report["flags"]:
        console.print(f"[yellow]![/] {flag}", highlight=False, soft_wrap=True)


@analyze_app.command("confusions")
def confusions_cmd(
    run: RunArg,
    cache: Annotated[Path, typer.Option(help="The feature cache holding the split.")],
    split: Annotated[Split, typer.Option(help="Split to score: test, train, or val (the held-out share of train).")] = "test",
    k: Annotated[int, typer.Option("-k", min=1, help="A wrong prediction counts as a prompt neighbour when among the true action's k nearest prompts.")] = 5,
    top: Annotated[int, typer.Option(min=1, help="Most confused pairs to list.")] = 10,
    device: DeviceOpt = None,
    weights: WeightsOpt = "last",
    json_out: JsonOpt = None,
) -> None:
    """Do the model's confusions on a split follow prompt-space neighbours? Spearman's rho between pair confusions
    and prompt cosines, neighbour hit rate against chance, and the most confused pairs."""
    from anim_clip.analysis.clips import confusion_report
    from anim_clip.analysis.tables import confusions_tables
    from anim_clip.data.dataset import load_dataset
    from anim_clip.cache.reader import open_cached_data, stored_in

    stored = _open(run, weights)
    head, cfg = _cached_model(stored, device)
    device_ = next(head.parameters()).device
    _, data = open_cached_data(cfg, cache, load_dataset(cfg.data), device_, head.inputs, use=stored_in(split))
    if split not in data:
        raise AnimClipError(f"no split {split!r} to score; choose one of {', '.join(data)}")
    result = confusion_report(stored, head, data[split], cfg, split=split, k=k, top=top)
    _emit(stored, "confusions", result.report, confusions_tables(result.report), json_out)


@analyze_app.command("map")
def map_cmd(
    run: RunArg,
    species: Annotated[Optional[str], typer.Option("--species", help="Highlight (and name) this species' prompts.")] = None,
    action: Annotated[Optional[str], typer.Option("--action", help="Highlight this action's prompts across species.")] = None,
    clusters: Annotated[int, typer.Option(min=1, help="faiss k-means clusters that colour the map.")] = 8,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="The PNG (default: <checkpoint>.prompt-space/map.png).")] = None,
    weights: WeightsOpt = "last",
    json_out: JsonOpt = None,
) -> None:
    """A 2-D PCA map of the prompt space, coloured by k-means cluster, with cluster purities by action and species."""
    from anim_clip.analysis.plots import prompt_map
    from anim_clip.analysis.tables import map_table

    stored = _open(run, weights)
    report = prompt_map(stored.space, out or stored.directory / "map.png", clusters=clusters,
                        species=species, action=action)
    _emit(stored, "map", report, [map_table(report)], json_out)
