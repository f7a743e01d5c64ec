"""README.md's "Your own videos" section, run as written through the command line, offline: its CSV
format, its config with the offline choice it names (``extends: own-videos``: the tiny CLIP shipped in
the package), and every command of its bash block, on clips of the codecs, pixel formats and sizes
that phones and cameras write, one of them truncated. The config exactly as written asks for
ViT-B/16 with OpenAI's weights, which cannot be downloaded here: refused in one line, naming the
offline choices."""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
from processes import ROOT, run_cli
from typer.testing import CliRunner
from videos import indexed_frames, write_truncated, write_video

from anim_clip.cache.store import FeatureCache
from anim_clip.cli import app
from anim_clip.config import BackboneConfig, load_config
from anim_clip.errors import AnimClipError, ConfigError
from anim_clip.models.backbone import resolve_weights

SECTION = re.search(r"^### Your own videos\n(.*?)^### ", (ROOT / "README.md").read_text(), re.S | re.M).group(1)
README_DATA = "/data/mine"  # where the section's config points; the tests substitute their folder
TRUNCATED = "clips/truncated download.mp4"

# path, encoder, pixel format, (height, width) as stored, display rotation: what users' folders hold
CLIPS = [
    ("clips/fox_001.mp4", "libx264", "yuv420p", (112, 112), 0),  # the section's own CSV rows
    ("clips/crane_07.mp4", "libx264", "yuv420p", (120, 160), 0),
    ("clips/vp9.webm", "libvpx-vp9", "yuv420p", (120, 160), 0),
    ("clips/hevc.mp4", "libx265", "yuv420p", (112, 112), 0),
    ("clips/ten-bit.mp4", "libx264", "yuv420p10le", (112, 112), 0),
    ("clips/motion-jpeg.avi", "mjpeg", "yuvj420p", (120, 160), 0),
    ("clips/full-chroma.mp4", "libx264", "yuv444p", (112, 112), 0),
    ("clips/full-hd.mp4", "libx264", "yuv420p", (1080, 1920), 0),
    ("clips/phone portrait.mp4", "libx264", "yuv420p", (720, 1280), 90),  # stored sideways, shown 720x1280
    ("clips/odd size.webm", "libvpx-vp9", "yuv420p", (75, 101), 0),  # odd height and width, 4:2:0
    ("clips/odd-444.mp4", "libx264", "yuv444p", (99, 131), 0),
]
ENCODERS = {encoder for _, encoder, *_ in CLIPS}
PLAIN = [f"clips/plain_{i}.mp4" for i in range(6)]  # more training clips, in the commonest format


def block(language: str) -> str:
    """The section's one unindented code block in ``language``."""
    (found,) = re.findall(rf"^```{language}\n(.*?)^```", SECTION, re.S | re.M)
    return found


def commands() -> list[list[str]]:
    """The section's bash block as argument lists, ``anim-clip`` dropped, comments cut."""
    lines = [line.split("#")[0].strip() for line in block("bash").splitlines()]
    return [shlex.split(line)[1:] for line in lines if line]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The section's dataset under a temporary ``/data/mine``: its CSV rows plus a clip of every
    codec and size in CLIPS, and a truncated download, in train.csv and test.csv; the section's
    config with ``extends: own-videos``."""
    missing = sorted(ENCODERS - av.codecs_available)
    if missing:
        pytest.skip(f"PyAV's FFmpeg lacks the encoders {missing}")
    work = tmp_path_factory.mktemp("own videos")  # a path with a space, as users' often have
    mine = work / "mine"
    (mine / "videos" / "clips").mkdir(parents=True)
    for i, (path, encoder, pix_fmt, (height, width), rotation) in enumerate(CLIPS):
        frames = np.roll(indexed_frames(8, height, width), 9 * i, axis=2)  # each clip its own pixels
        write_video(mine / "videos" / path, frames, codec=encoder, pix_fmt=pix_fmt, rotation=rotation)
    for i, path in enumerate(PLAIN):
        write_video(mine / "videos" / path, np.roll(indexed_frames(8, 112, 112), -9 * i, axis=1))
    write_truncated(mine / "videos" / CLIPS[0][0], mine / "videos" / TRUNCATED, keep=0.3)

    header, *rows = block("csv").splitlines()
    fox, crane = (row.split(",", 1)[1] for row in rows)  # the section's labels: actions;..., species
    labelled = lambda paths: [f"{path},{(fox, crane)[i % 2]}" for i, path in enumerate(paths)]  # noqa: E731
    train = rows + labelled(PLAIN + [path for path, *_ in CLIPS[2:7]] + [TRUNCATED])
    test = labelled([path for path, *_ in CLIPS[7:]])
    for name, lines in (("train.csv", train), ("test.csv", test)):
        (mine / name).write_text("\n".join([header, *lines]) + "\n")

    config = block("yaml").replace(README_DATA, str(mine))
    assert "extends: ak-cached" in config
    (work / "my-dataset.yaml").write_text(config.replace("extends: ak-cached", "extends: own-videos"))
    return work


def test_the_sections_commands_run_offline_on_every_kind_of_clip(folder: Path, monkeypatch: pytest.MonkeyPatch):
    """dataset-info, extract, train, eval and predict as the section writes them, from the folder
    holding the config: every good clip extracted with finite features, the truncated one recorded
    failed with its reason, and a model trained, evaluated and predicting."""
    mine = str(folder / "mine")
    steps = {args[0]: [arg.replace(README_DATA, mine) for arg in args] for args in commands()}
    assert list(steps) == ["dataset-info", "extract", "train", "eval", "predict"]
    monkeypatch.chdir(folder)
    outputs = {}
    for name, args in steps.items():
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, f"{name}: {result.output}{result.exception!r}"
        outputs[name] = result.output

    assert "my-dataset: 3 actions, 2 species" in outputs["dataset-info"]  # Walking, Sniffing, Flying; fox, crane
    cache = FeatureCache(folder / "mine.zarr")
    failed = {}
    for split in ("train", "test"):
        data = cache.split(split)
        assert bool(data.done.all())
        for clip_id, features, error in zip(data.clip_ids, data.cls, data.errors):
            if error:
                failed[clip_id] = error
            else:
                assert bool(features.float().isfinite().all()), clip_id
    assert list(failed) == [TRUNCATED] and failed[TRUNCATED].strip()
    every_clip = {path for path, *_ in CLIPS} | set(PLAIN) | {TRUNCATED}
    assert set(cache.split("train").clip_ids) | set(cache.split("test").clip_ids) == every_clip

    report = json.loads((folder / "runs" / "mine" / "eval.json").read_text())
    assert np.isfinite(report["mAP"])
    predictions = json.loads((folder / "predictions" / "predictions.json").read_text())
    assert predictions and (folder / "predictions" / "timeline.csv").is_file()


@pytest.mark.parametrize("environment", [["HF_HUB_OFFLINE=1"], ["-u", "HF_HUB_OFFLINE", "HF_ENDPOINT=http://127.0.0.1:9"]],
                         ids=["HF_HUB_OFFLINE", "hub unreachable"])
def test_the_config_as_written_is_refused_offline_in_one_line(folder: Path, tmp_path: Path, environment: list[str]):
    """The section's own config asks for OpenAI's ViT-B/16 weights. With the hub out of reach (offline
    mode, or a hub address where nothing answers) and an empty Hugging Face cache, extract stops
    before any clip, through open_clip's real loading path, in one line naming the offline choices."""
    config = tmp_path / "as-written.yaml"
    config.write_text(block("yaml").replace(README_DATA, str(folder / "mine")))
    proc = run_cli("extract", str(config), "--out", str(tmp_path / "x.zarr"), check=False,
                   wrap=["env", *environment, f"HF_HOME={tmp_path / 'hf'}"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stdout.strip()
    assert "\n" not in line and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).count("vit_base_patch16_clip_224.openai") == 1  # said once, not logged too
    assert line.startswith("error: cannot download the 'openai' weights of 'ViT-B-16'")
    for choice in ("backbone.pretrained=/path/to/weights.safetensors", "backbone.model=local-dir:/path",
                   "backbone.model=anim-clip-tiny with backbone.pretrained=demo-world"):
        assert choice in line
    assert not (tmp_path / "x.zarr").exists()


def test_weights_in_the_hugging_face_cache_are_used_offline(folder: Path, tmp_path: Path):
    """Offline, weights already in the hub's cache are not refused: open_clip loads that file (here
    a damaged one, so the load itself fails, naming the weights, instead of a download refusal)."""
    snapshot = tmp_path / "hf" / "hub" / "models--timm--vit_base_patch16_clip_224.openai" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"not weights")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    config = tmp_path / "as-written.yaml"
    config.write_text(block("yaml").replace(README_DATA, str(folder / "mine")))
    proc = run_cli("extract", str(config), "--out", str(tmp_path / "x.zarr"), check=False,
                   wrap=["env", "HF_HUB_OFFLINE=1", f"HF_HOME={tmp_path / 'hf'}"])
    assert proc.returncode == 2 and "cannot download" not in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.startswith("error: cannot load 'ViT-B-16' weights 'openai'"), proc.stdout


def test_an_unknown_tag_is_refused_listing_the_models_tags():
    with pytest.raises(ConfigError, match=r"backbone.pretrained: 'opena' is neither a file nor an open_clip tag of "
                                          r"'ViT-B-16' \(its tags: openai, laion400m_e31, "):
        resolve_weights(BackboneConfig(model="ViT-B-16", pretrained="opena"))


def test_the_sections_weights_file_is_a_backbone_file_of_the_same_model(folder: Path, tmp_path: Path):
    """The section's first offline choice, its indented YAML added to its config: the same ViT-B/16
    (and QuickGELU) with its weights read from that file, never a download (here the file is absent)."""
    snippet = re.search(r"^( +)```yaml\n(.*?)^\1```", SECTION, re.S | re.M).group(2)
    config = tmp_path / "with-a-file.yaml"
    config.write_text(block("yaml").replace(README_DATA, str(folder / "mine")) + textwrap.dedent(snippet))
    cfg = load_config(config)
    assert (cfg.backbone.model, cfg.backbone.quick_gelu) == ("ViT-B-16", True)
    with pytest.raises(AnimClipError, match=r"^/models/vit-b-16-openai/open_clip_model.safetensors: checkpoint file "
                                            r"not found \(backbone.pretrained\)$"):
        resolve_weights(cfg.backbone)
