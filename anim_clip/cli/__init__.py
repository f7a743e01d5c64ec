"""The ``anim-clip`` command line: thin typer commands that parse options and call the library.

Every command lives in this package: the top-level ones here, each subcommand group in a module of
its own (``cache``, ``analyze``); ``main()`` is the console script's entry point."""

from __future__ import annotations

import errno
import math
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Literal, Optional

import typer
from rich.markup import escape

from anim_clip.cli.analyze import analyze_app
from anim_clip.cli.cache import cache_app
from anim_clip.cli.options import Split, Weights
from anim_clip.config import DataConfig, Decoder, TestCrops, TrainMode, shipped_configs
from anim_clip.errors import AnimClipError
from anim_clip.ui import console

if TYPE_CHECKING:
    from anim_clip.export import ExportOptions


def _flags_show_no_type() -> None:
    """typer's rich help prints a type (``<bool>``) beside every flag, ``--help`` included, as if it took
    a value; a flag takes none, so its type column stays empty (older typer prints none already)."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is not None:
        TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else shown(self, ctx)


_flags_show_no_type()

app = typer.Typer(
    name="anim-clip",
    help="Animal-CLIP, fast: cache frozen CLIP features of animal videos once, then train and "
    "evaluate the action-recognition head on them in minutes.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)

ConfigArg = Annotated[str, typer.Argument(help=f"A YAML config file, or the name of a shipped one: {', '.join(shipped_configs())}.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a config value, e.g. --set train.lr=1e-4 (repeatable).")]
AllowIncompleteOpt = Annotated[bool, typer.Option("--allow-incomplete", help="Use a cache whose extraction is unfinished: only the clips extracted so far, which the report (eval.json: pending_clips) then says. Without it such a cache is refused.")]

DEFAULT_DEMO_DIR = Path("demo-out")


def _positive_seconds(value: float | None) -> float | None:
    """A number of seconds must be finite and above zero (NaN slips past typer's ``min=``)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"expected a positive number of seconds, got {value}")
    return value


def _load(config: str, overrides: list[str] | None):
    from anim_clip.config import load_config

    return load_config(config, overrides or [])


@app.command("make-demo-data")
def make_demo_data_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the dataset into (created; reused when complete).")],
    train_clips: Annotated[int, typer.Option(min=1, help="Training clips to generate.")] = 240,
    test_clips: Annotated[int, typer.Option(min=1, help="Test clips to generate.")] = 96,
    frames: Annotated[int, typer.Option(min=2, help="Frames per clip.")] = 32,
    size: Annotated[int, typer.Option(min=32, help="Frame width and height in pixels (even).")] = 112,
    seed: Annotated[int, typer.Option(min=0, help="Random seed: the same seed gives the same dataset.")] = 0,
) -> None:
    """Generate the procedural demo dataset: real H.264 clips of animals whose actions differ in motion,
    with label, species, relation and split files in the Animal Kingdom release format."""
    from anim_clip.data.demo import make_demo_data

    from anim_clip.demo import demo_config

    summary = make_demo_data(out_dir, train_clips=train_clips, test_clips=test_clips, seed=seed, size=size, num_frames=frames, progress=True)
    _print_dataset(demo_config(out_dir).data)
    console.print(f"demo dataset in [bold]{out_dir}[/] ({summary.train_clips} train / {summary.test_clips} test clips)")


@app.command("dataset-info")
def dataset_info_cmd(
    config: ConfigArg,
    set_: SetOpt = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the summary as JSON here.")] = None,
) -> None:
    """Read a dataset's label, species, relation and split files and summarise them (no video is opened)."""
    summary = _print_dataset(_load(config, set_).data)
    if json_out is not None:
        from anim_clip.io import atomic_write_json

        atomic_write_json(json_out, summary)


def _print_dataset(data: DataConfig) -> dict:
    from anim_clip.data.dataset import load_dataset
    from anim_clip.data.summary import dataset_summary, summary_table

    dataset = load_dataset(data)
    summary = dataset_summary(dataset, data.graph)
    console.print(summary_table(summary))
    if "release_vs_train_graph" in summary:
        console.print(f"release relation file vs graph rebuilt from train: {summary['release_vs_train_graph']}")
    return summary


@app.command("describe")
def describe_cmd(
    config: ConfigArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for actions.csv and species.csv (id,name,description; K rows per class).")],
    base_url: Annotated[str, typer.Option(help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vLLM) or http://localhost:11434/v1 (ollama).")],
    model: Annotated[str, typer.Option(help="Model name the endpoint serves.")],
    k: Annotated[int, typer.Option("-k", min=1, help="Descriptions per class (the release's loader expects 50).")] = 50,
    kind: Annotated[Literal["actions", "species", "both"], typer.Option(help="What to describe: actions, species or both.")] = "both",
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key (never logged or written).")] = "OPENAI_API_KEY",
    cache_dir: Annotated[Optional[Path], typer.Option(help="Response cache (default: OUT/.cache); cached requests are never sent again.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds one request may take in all, reply included (a server that stalls or trickles is cut off, then retried).", callback=_positive_seconds)] = 120.0,
    set_: SetOpt = None,
) -> None:
    """Write K short visual descriptions per action and per species with an LLM; resumable and cached."""
    from anim_clip.data.dataset import load_dataset
    from anim_clip.data.describe import ChatClient, describe_classes

    dataset = load_dataset(_load(config, set_).data)
    _interruption.kept = _files_written(out_dir, "; run the same command again to go on")
    client = ChatClient(base_url, model, api_key_env=api_key_env, timeout=timeout, cache_dir=cache_dir or out_dir / ".cache")
    jobs = {"actions": ("action", dataset.actions), "species": ("species", dataset.species)}
    for name in (["actions", "species"] if kind == "both" else [kind]):
        what, names = jobs[name]
        path = describe_classes(names, what, k, out_dir / f"{name}.csv", client)
        console.print(f"{len(names)} {name} x {k} descriptions -> [bold]{path}[/]")


app.add_typer(cache_app, name="cache")
app.add_typer(analyze_app, name="analyze")


def _parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (1-based i, as users count) -> (i-1, n); default: one shard per torchrun rank."""
    from anim_clip.runtime.distributed import default_shard

    if text is None:
        return default_shard()
    i, sep, n = text.partition("/")
    if not sep or not i.isdigit() or not n.isdigit() or not 1 <= int(i) <= int(n):
        raise AnimClipError(f"--shard {text!r}: expected i/n with 1 <= i <= n, e.g. --shard 2/4")
    return int(i) - 1, int(n)


@app.command("extract")
def extract_cmd(
    config: ConfigArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="The cache folder (a zarr store); an existing one is resumed.")],
    split: Annotated[Optional[list[str]], typer.Option("--split", help="Splits to extract (repeatable; default: train and test).")] = None,
    shard: Annotated[Optional[str], typer.Option(help="Extract only shard i of n (e.g. 2/4) into the same store; default: one shard per torchrun rank.")] = None,
    workers: Annotated[int, typer.Option(
        min=1, help="Decoding threads running ahead of the encoder. The decoder is sampling.decoder: decord (default), "
             "pyav, torchcodec, or torchcodec-cuda (NVDEC on the GPU).")] = 4,
    set_: SetOpt = None,
) -> None:
    """Phase one: decode every clip once, encode its frames with the frozen open_clip image tower and
    store per-frame features in a zarr cache. Killing it is safe: run it again to resume."""
    cfg = _load(config, set_)  # a bad config is refused before torch and open_clip load (seconds)
    index, count = _parse_shard(shard)
    from anim_clip.cache.extract import extract
    from anim_clip.ui import table

    _interruption.kept = lambda: f"{out} keeps every clip extracted so far; run the same command again to resume"
    reports = extract(cfg, out, tuple(split or ("train", "test")), shard=index, num_shards=count, workers=workers)
    console.print(table("extraction", ["split", "clips", "done before", "extracted", "decoded by", "failed", "failure reasons",
                                       "MB written", "clips/s", "frames/s"], [r.row() for r in reports]))
    if any(r.interrupted for r in reports):
        _interruption.kept = None  # extract said what it kept
        raise typer.Exit(130)


@app.command("train")
def train_cmd(
    config: ConfigArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory: config.yaml, metrics.jsonl, last.pt / best.pt, eval.json, plots/.")],
    cache: Annotated[Optional[Path], typer.Option(help="Feature cache from `anim-clip extract` (cached mode only).")] = None,
    mode: Annotated[Optional[TrainMode], typer.Option("--mode", help="cached: the head on a feature cache; e2e: fine-tune the cross-frame ViT with the head on the raw videos of data.root (default: the config's train.mode).")] = None,
    init_head: Annotated[Optional[Path], typer.Option("--init-head", help="e2e only: start from the head of this cached-mode run directory (its last.pt) or checkpoint file.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last completed epoch, bit-exactly.")] = False,
    allow_config_change: Annotated[bool, typer.Option("--allow-config-change", help="With --resume: go on with settings that differ from the run's (refused otherwise); the change is recorded in metrics.jsonl and config.yaml says what now runs.")] = False,
    select_on_test: Annotated[bool, typer.Option("--select-on-test", help="Choose best.pt on the test split (only when you mean to; default: a validation share, train.val_fraction).")] = False,
    allow_incomplete: AllowIncompleteOpt = False,
    set_: SetOpt = None,
) -> None:
    """Train Animal-CLIP: the head on a feature cache (cached mode, phase two), or the whole model end to end on
    the raw videos (e2e), then evaluate the last epoch on the test split (table, eval.json, plots). Runs on one
    device, or on several with `torchrun --nproc-per-node N -m anim_clip train ...`."""
    import os

    cfg = _load(config, [*(set_ or []), *([f"train.mode={mode}"] if mode else [])])  # refused before torch loads
    from anim_clip.train.engine import train

    _interruption.kept = lambda: _run_kept(out)
    result = train(cfg, cache=cache, out=out, resume=resume, select_on_test=select_on_test, init_head=init_head,
                   allow_incomplete=allow_incomplete, allow_config_change=allow_config_change)
    if os.environ.get("RANK", "0") == "0":
        console.print(f"run saved in [bold]{result.run_dir}[/]; plots: {', '.join(str(p) for p in result.plots)}")


@app.command("eval")
def eval_cmd(
    run: Annotated[Path, typer.Argument(help="A run directory (uses its last.pt, or best.pt with --weights best) or a checkpoint file.")],
    cache: Annotated[Optional[Path], typer.Option(help="Feature cache holding the split to evaluate (a head checkpoint).")] = None,
    videos: Annotated[bool, typer.Option("--videos", help="Evaluate on the raw videos of the checkpoint's config instead of a cache, with its test views (sampling.test_clips x sampling.test_crops); needed for end-to-end checkpoints.")] = False,
    split: Annotated[Split, typer.Option(help="Split to evaluate: test, train, or val (the held-out share of train).")] = "test",
    weights: Annotated[Weights, typer.Option(help="In a run directory: last (the release's protocol) or best.")] = "last",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where eval.json and plots go (default: the run directory).")] = None,
    allow_incomplete: AllowIncompleteOpt = False,
) -> None:
    """Evaluate a trained model with the field's metrics: mAP (per class; head / middle / tail), top-1/top-5 and
    class accuracy for single-label data, inconsistent predictions; a table, eval.json and PNG plots. On a cache,
    the same metrics of three baselines beside the head's: class frequency, zero-shot CLIP, and a linear probe
    fitted on the cached training clips."""
    if videos == (cache is not None):
        raise AnimClipError("give either --cache CACHE (a head on cached features) or --videos (the raw videos)")
    if videos:
        from anim_clip.evaluate.videos import evaluate_checkpoint_on_videos

        report = evaluate_checkpoint_on_videos(run, split=split, weights=weights, out=out)
    else:
        from anim_clip.evaluate.cached import evaluate_checkpoint

        report = evaluate_checkpoint(run, cache, split=split, weights=weights, out=out, allow_incomplete=allow_incomplete)
    console.print(f"plots: {', '.join(report.get('plots', []))}")


@app.command("sweep")
def sweep_cmd(
    config: ConfigArg,
    cache: Annotated[Path, typer.Option(help="The feature cache every run trains on.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Sweep folder: one run directory per combination and seed, comparison.csv/json/png.")],
    grid: Annotated[Optional[list[str]], typer.Option("--grid", help="An axis of the grid, e.g. --grid model.refine=on,off (repeatable; every combination runs).")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per combination (train.seed, train.seed+1, ...).")] = 1,
    parallel: Annotated[int, typer.Option(min=1, help="Runs training at once, each in a worker process that keeps the cache in memory for all its runs; they share the device and the CPU threads.")] = 1,
    reference: Annotated[Optional[str], typer.Option("--reference", help="The combination the others are compared with, named as in the table, e.g. refine=on (default: the first).")] = None,
    allow_incomplete: AllowIncompleteOpt = False,
    set_: SetOpt = None,
) -> None:
    """Ablations in one command: train every combination of the grid × seeds on the same cache (loaded once; the
    baselines fitted once and stored in it), then print one comparison table (mean ± std over seeds, the difference to
    a reference, the baselines once) and write it as CSV, JSON and a plot. Re-running continues an interrupted sweep."""
    from anim_clip.train.sweep import run_sweep

    run_sweep(config, set_ or [], grid or [], seeds, cache, out, parallel, allow_incomplete, reference)


EventsThresholdOpt = Annotated[float, typer.Option("--events-threshold", help="With --window: the score (0 to 1] at which a moment counts as a behaviour, for events.csv (one row per stretch an action holds), time_budgets.csv (each video's share of time per behaviour) and budget_<video>.png, and for the Camtrap DP observations.")]
CamtrapDpOpt = Annotated[Optional[Path], typer.Option("--camtrap-dp", help="Write a Camera Trap Data Package (Camtrap DP 1.0.2: datapackage.json, deployments.csv, media.csv, observations.csv; one observation per behaviour event) into this folder, for camtrapR, Agouti, Wildlife Insights or GBIF.")]
OverlayOpt = Annotated[bool, typer.Option("--overlay", help="Write overlay_<video>.mp4 per scored video: a copy with the species and the moment's top actions drawn on every frame (re-encoded, slow for long videos; a rerun keeps those already drawn).")]
StartTimeOpt = Annotated[Optional[str], typer.Option("--start-time", help="With --camtrap-dp and a single video: when it started recording, ISO 8601 (e.g. 2024-05-01T06:30:00+02:00). Default: the video's creation_time tag, else its file time.")]
LocationOpt = Annotated[Optional[str], typer.Option("--location", help="With --camtrap-dp: the camera's LAT,LON in decimal degrees (e.g. 50.85,4.35). Default: 0,0, flagged as a placeholder in the package.")]


def _exports(threshold: float, camtrap_dp: Path | None, overlay: bool, start_time: str | None,
             location: str | None) -> ExportOptions:
    """The export options from their command-line text, each checked before any weights load."""
    from datetime import datetime

    from anim_clip.export import ExportOptions

    when = None
    if start_time is not None:
        try:
            when = datetime.fromisoformat(start_time)
        except ValueError:
            raise AnimClipError(f"--start-time {start_time!r}: expected an ISO 8601 date-time such as "
                                "2024-05-01T06:30:00+02:00") from None
    where = None
    if location is not None:
        try:
            latitude, longitude = (float(v) for v in location.split(","))
        except ValueError:
            raise AnimClipError(f"--location {location!r}: expected LAT,LON in decimal degrees, e.g. 50.85,4.35") from None
        where = (latitude, longitude)
    return ExportOptions(threshold, camtrap_dp, overlay, when, where)


@app.command("predict")
def predict_cmd(
    model: Annotated[Path, typer.Argument(help="A run directory from `anim-clip train` (its last.pt, or best.pt with --weights best) or a checkpoint file: a head (run on the frozen open_clip backbone its config names) or an end-to-end model.")],
    inputs: Annotated[Optional[list[Path]], typer.Argument(help="Video files (mp4, avi, mov, ...; any length) and folders, searched recursively for videos.")] = None,
    list_file: Annotated[Optional[Path], typer.Option("--list", help="A text file naming videos or folders, one a line (relative to the file's folder; # comments).")] = None,
    weights: Annotated[Weights, typer.Option(help="In a run directory: last or best.")] = "last",
    species: Annotated[Optional[list[str]], typer.Option("--species", help="A species in the videos, named as in the checkpoint's vocabulary (repeatable): the head conditions on it instead of predicting it.")] = None,
    predict_species: Annotated[bool, typer.Option("--predict-species", help="Predict the species zero-shot from the frames and report them (the default when no --species is given).")] = False,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Actions shown per video (and per window in predictions.json).")] = 5,
    window: Annotated[Optional[float], typer.Option("--window", callback=_positive_seconds, help="Slide a window of this many seconds over each video and write a timeline: timeline.csv and timeline_<video>.png.")] = None,
    stride: Annotated[Optional[float], typer.Option("--stride", callback=_positive_seconds, help="Seconds between window starts (default: half the window).")] = None,
    clips: Annotated[Optional[int], typer.Option("--clips", min=1, help="Temporal views per video or window (default: the checkpoint's sampling.test_clips).")] = None,
    crops: Annotated[Optional[TestCrops], typer.Option("--crops", help="Spatial views per clip, 1 or 3 (default: the checkpoint's sampling.test_crops).")] = None,
    decoder: Annotated[Optional[Decoder], typer.Option("--decoder", help="Video decoder: decord, pyav, torchcodec, or torchcodec-cuda (NVDEC on the GPU). Default: the checkpoint's, or decord where this machine lacks it.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Decoding threads, each decoding one video ahead of the image tower.")] = 4,
    shard: Annotated[Optional[str], typer.Option(help="Score only shard i of n (e.g. 2/4, a Slurm array task) into its own journal; default: one shard per torchrun rank. Then `anim-clip predict-merge OUT`.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="Torch device, e.g. cuda:1 or cpu (default: the GPU when there is one).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for predictions.jsonl (the journal), predictions.json, predictions.csv, the timeline, events and budget files and the overlays; created.")] = Path("predictions"),
    events_threshold: EventsThresholdOpt = 0.5,
    camtrap_dp: CamtrapDpOpt = None,
    overlay: OverlayOpt = False,
    start_time: StartTimeOpt = None,
    location: LocationOpt = None,
) -> None:
    """Score videos with a trained checkpoint: the top actions and species of each (softmax averaged over its test
    views) as predictions.csv and predictions.json; with --window, action scores over time, behaviour events and time
    budgets; a Camtrap DP package with --camtrap-dp, labelled videos with --overlay. Each video is journaled as it
    finishes: running the same command again scores only the videos left. Exit code 1 if a video failed."""
    if not inputs and list_file is None:
        raise AnimClipError("no videos: name video files or folders, or give --list FILE")
    exports, index = _exports(events_threshold, camtrap_dp, overlay, start_time, location), _parse_shard(shard)
    from anim_clip.predict import run_predict  # after the options are checked: it loads torch (seconds)

    _interruption.kept = _files_written(out)
    failed = run_predict(model, inputs or [], out=out, list_file=list_file, weights=weights, top_k=top_k,
                         species=species, predict_species=predict_species, window=window, stride=stride, clips=clips,
                         crops=crops, device=device, decoder=decoder, workers=workers, shard=index, exports=exports)
    if failed:
        raise typer.Exit(1)


@app.command("predict-merge")
def predict_merge_cmd(
    out: Annotated[Path, typer.Argument(help="The --out folder the shards of `anim-clip predict --shard i/n` (or torchrun ranks) wrote their journals into.")],
    events_threshold: EventsThresholdOpt = 0.5,
    camtrap_dp: CamtrapDpOpt = None,
    overlay: OverlayOpt = False,
    start_time: StartTimeOpt = None,
    location: LocationOpt = None,
) -> None:
    """Make predictions.json, predictions.csv (and the timeline, events and budget files, and the exports asked for)
    from every journal in OUT: the parts of a sharded predict, one row per video; also remakes a run's outputs with
    other export options, without scoring again. Exit code 1 if a video failed."""
    from anim_clip.predict import merge_predictions

    if merge_predictions(out, _exports(events_threshold, camtrap_dp, overlay, start_time, location)):
        raise typer.Exit(1)


@app.command("pretrain-tiny")
def pretrain_tiny_cmd(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write the weights (default: the file shipped in the package, anim_clip/assets).")] = None,
    frames: Annotated[int, typer.Option(min=1, help="Captioned demo-world frames to render for training.")] = 12000,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 500,
    batch_size: Annotated[int, typer.Option(min=2, help="Image-caption pairs per step (the contrastive loss's negatives).")] = 192,
    seed: Annotated[int, typer.Option(min=0, help="Random seed: frames, initialisation and batches.")] = 0,
) -> None:
    """Train the tiny CLIP (anim-clip-tiny) contrastively on rendered demo-world frames captioned with species,
    colour, size, position, facing and pose words; the demo and tests use the weights this writes."""
    from anim_clip.train.pretrain_tiny import pretrain_tiny
    from anim_clip.ui import table

    result = pretrain_tiny(out, frames=frames, steps=steps, batch_size=batch_size, seed=seed)
    console.print(table("tiny CLIP pretraining", ["", "value"], [
        ["weights", result.path], ["steps", result.steps], ["final loss", f"{result.final_loss:.3f}"],
        ["zero-shot species accuracy (held-out frames)", f"{100 * result.species_zero_shot_accuracy:.1f}%"],
        ["caption retrieval top-1 (256 held-out)", f"{100 * result.retrieval_top1:.1f}%"]]))


@app.command("model-summary")
def model_summary_cmd(
    config: ConfigArg,
    set_: SetOpt = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the rows as JSON here.")] = None,
) -> None:
    """Parameter counts per module of the end-to-end model (total, trainable, dead: never given a gradient),
    built with random weights (for a model name nothing is downloaded)."""
    import dataclasses

    cfg = _load(config, set_)  # refused before torch loads
    from anim_clip.models.factory import end_to_end
    from anim_clip.models.summary import parameter_summary
    from anim_clip.ui import table

    model = end_to_end(cfg, load_pretrained=False)
    rows = parameter_summary(model)
    console.print(table("parameters (millions)", ["module", "total", "trainable", "dead"],
                        [[r.module, f"{r.total / 1e6:.2f}", f"{r.trainable / 1e6:.2f}", f"{r.dead / 1e6:.2f}"] for r in rows]))
    if json_out is not None:
        from anim_clip.io import atomic_write_json

        atomic_write_json(json_out, [dataclasses.asdict(r) for r in rows])


@app.command("convert-release")
def convert_release_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="The checkpoint to convert.")],
    out: Annotated[Path, typer.Argument(help="Where to write the converted checkpoint.")],
    to_release: Annotated[bool, typer.Option("--to-release", help="Convert one of ours back into the release's format instead.")] = False,
    config: Annotated[Optional[str], typer.Option(help="A dataset config (ak, mammalnet, lote, ...) whose class names are recorded in the converted checkpoint.")] = None,
) -> None:
    """Turn an authors' Animal-CLIP checkpoint into an anim-clip checkpoint (or back), so the published weights
    work with eval and predict. Loaded safely: plain tensors and data only (weights_only)."""
    from anim_clip.models.release import convert_release_checkpoint, convert_to_release

    if to_release:
        path = convert_to_release(checkpoint, out)
    else:
        names = {}
        if config is not None:
            from anim_clip.data.dataset import load_dataset

            dataset = load_dataset(_load(config, None).data)
            names = {"actions": list(dataset.actions), "species": list(dataset.species)}
        path = convert_release_checkpoint(checkpoint, out, **names)
    console.print(f"converted -> [bold]{path}[/]")


@app.command("demo")
def demo_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Working folder for the demo's data, cache and run (reused when run again).")] = DEFAULT_DEMO_DIR,
    seed: Annotated[int, typer.Option(min=0, help="Random seed of the generated dataset.")] = 0,
    set_: SetOpt = None,
) -> None:
    """Run the whole pipeline on the embedded demo dataset (generated on the fly, no download): data, feature
    extraction with the shipped tiny CLIP, training, evaluation, and a comparison with three baselines (class
    frequency, zero-shot CLIP, a linear probe on the frozen features)."""
    from anim_clip.demo import run_demo

    run_demo(out_dir, seed, set_)


class _Interruption:
    """Ctrl-C and SIGTERM alike raise ``KeyboardInterrupt`` where the program is, so the same code
    keeps the work done (extract's flush, predict's files, atomic writes' clean-up); ``main()``
    then says in one line what the command kept (``kept``, set by the command) and exits with
    128 + the signal (130, 143)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.kept: Callable[[], str] | None = lambda: ""  # None: the command said it itself

    def __call__(self, signum: int, frame: object) -> None:
        self.signal = signum
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def report(self, signum: int) -> None:
        for each in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C does not cut this line
            signal.signal(each, signal.SIG_IGN)
        if self.kept is not None:
            kept = self.kept()
            console.print(f"[yellow]interrupted ({signal.Signals(signum).name}){': ' + escape(kept) if kept else ''}[/]",
                          soft_wrap=True, highlight=False)
        sys.exit(128 + signum)


_interruption = _Interruption()


def _run_kept(out: Path) -> str:
    """What an interrupted ``train`` leaves: ``last.pt`` and its epoch (read from the checkpoint:
    the log's line of an epoch comes just before its checkpoint)."""
    from anim_clip.models.checkpoint import load_checkpoint
    from anim_clip.runtime.rundir import RunDir

    last = RunDir(out).last
    if not last.exists():
        return f"no epoch finished, so {out} holds no checkpoint"
    return f"{last} holds epoch {load_checkpoint(last).extra['train_state']['epoch']}; continue with --resume"


def _files_written(folder: Path, hint: str = "") -> Callable[[], str]:
    """What an interrupted command kept in ``folder``: the files it wrote or changed since now (all
    writes are whole files or whole lines)."""
    before = _modified(folder)

    def kept() -> str:
        written = sorted(p for p, t in _modified(folder).items() if before.get(p) != t)
        return (f"kept {', '.join(str(p) for p in written)}" if written else f"nothing written to {folder}") + hint
    return kept


def _modified(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.glob("*") if p.is_file()} if folder.is_dir() else {}


def main() -> None:
    """Entry point: user errors, and a file the system will not read or write (read-only folder,
    full disk, quota), become one red line and exit code 2, never a traceback; Ctrl-C and SIGTERM
    one line saying what was kept (:class:`_Interruption`)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interruption)
    try:
        code = app(standalone_mode=False)  # typer returns 130 for a KeyboardInterrupt, a command's typer.Exit code
    except typer.TyperException as e:  # typer's usage errors (a bad option or argument): one line, as any refusal
        ctx = getattr(e, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        _error(f"{e.format_message().replace(': Value error, ', ': ').rstrip('.')}{where}")
    except AnimClipError as e:
        _error(str(e))
    except OSError as e:
        if e.filename is not None:
            _error(f"{e.filename}: {e.strerror or e}")
        if e.errno in _REFUSED_WRITES:  # from a library's own writes (zarr chunks), which name no file
            _error(f"{e.strerror}, writing this command's output")
        raise
    except (SystemExit, KeyboardInterrupt):
        if _interruption.signal is None:
            raise
        code = None  # interrupted: said below with what the command kept
    if _interruption.signal is not None:
        _interruption.report(_interruption.signal)
    sys.exit(code or 0)


_REFUSED_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES}


def _error(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    sys.exit(2)
