"""Any open_clip backbone, in every layout anim-clip accepts: a registered name (the shipped
``anim-clip-tiny``), a ``local-dir:`` folder (``open_clip_config.json`` with its own preprocessing,
SigLIP-like, plus safetensors weights) and timm image towers registered by config (a ViT and a
ConvNeXt). Each goes through extract, train, eval (cache and videos) and predict; its cache records
the pixels the model asks for, and the features are those pixels through its tower."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from processes import run_cli

from anim_clip.cache.extract import extract
from anim_clip.cache.store import FeatureCache
from anim_clip.config import Config
from anim_clip.data.dataset import load_dataset
from anim_clip.data.descriptions import CLIP_TEXT, class_texts
from anim_clip.data.sampling import union_indices
from anim_clip.data.transforms import CLIP_MEAN, CLIP_STD, Pixels, render_views, rendered_pixels
from anim_clip.data.video import open_video
from anim_clip.demo import demo_config
from anim_clip.errors import AnimClipError, CacheError, ConfigError
from anim_clip.evaluate.videos import evaluate_checkpoint_on_videos
from anim_clip.frames import plan_views
from anim_clip.models.backbone import FrozenImageTower, create_clip, encode_texts, text_fit
from anim_clip.models.checkpoint import load_checkpoint, save_checkpoint
from anim_clip.models.factory import head_and_tower
from anim_clip.models.factory import end_to_end
from anim_clip.predict import predict_videos
from anim_clip.train.engine import train

T = 4
COMMON = [f"sampling.num_frames={T}", "sampling.train_views=2", "sampling.normalization=model",  # demo.yaml pins clip
          "runtime.precision=fp32", "train.batch_size=4", "train.accumulation=1", "train.epochs=2",
          "train.warmup_epochs=1", "train.log_every=1"]
TEXT_CFG = {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}  # a 32-token context
SIGLIP_LIKE = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}
TIMM = {"timm-vit": "test_vit", "timm-convnext": "test_convnext"}  # timm's own tiny test models, 160 px
PATCHES = ["backbone.patches=fp16", "model.video_specific_prompt=true"]  # ViT towers: patch tokens cached and used


def write_local_dir(folder: Path, image_size: int = 64) -> str:
    """A downloaded open_clip model as the hub ships one: config with preprocessing, and weights."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    model_cfg = {"embed_dim": 64, "text_cfg": TEXT_CFG,
                 "vision_cfg": {"image_size": image_size, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": SIGLIP_LIKE}))
    torch.manual_seed(3)
    model = open_clip.model.CLIP(**model_cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return f"local-dir:{folder}"


def register_timm(folder: Path, timm_name: str) -> str:
    """An open_clip model name whose image tower is timm's ``timm_name`` (random init)."""
    name = f"anim-clip-test-{timm_name}"
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"embed_dim": 64, "text_cfg": TEXT_CFG, "vision_cfg": {
        "timm_model_name": timm_name, "timm_model_pretrained": False, "image_size": 160}}))
    open_clip.add_model_config(path)
    return name


@pytest.fixture(scope="module")
def data(demo_data) -> Path:
    return demo_data(train_clips=12, test_clips=6, num_frames=16, size=64, seed=2)  # test_species's too


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, list[str]]:
    """Each layout's backbone overrides (on the demo config, whose model is ``anim-clip-tiny``)."""
    folder = tmp_path_factory.mktemp("models")
    timm = {layout: [f"backbone.model={register_timm(folder, name)}", "backbone.pretrained=null",
                     "sampling.image_size=160", "sampling.resize=182"] for layout, name in TIMM.items()}
    return {
        "registered": ["backbone.pretrained=demo-world"],
        "local-dir": [f"backbone.model={write_local_dir(folder / 'siglip-like')}", "backbone.pretrained=null",
                      "backbone.quick_gelu=false", *PATCHES],
        "timm-vit": [*timm["timm-vit"], *PATCHES],
        "timm-convnext": timm["timm-convnext"],
    }


def config(data: Path, models: dict[str, list[str]], layout: str, *extra: str) -> Config:
    return demo_config(data, [*COMMON, *models[layout], *extra])


# The pixels each layout's model asks for (open_clip's defaults where its config names none).
PIXELS = {
    "registered": Pixels(64, CLIP_MEAN, CLIP_STD, "bilinear", "shortest"),  # how pretrain-tiny renders
    "local-dir": Pixels(64, (0.5,) * 3, (0.5,) * 3, "bicubic", "squash"),
    "timm-vit": Pixels(160, CLIP_MEAN, CLIP_STD, "bicubic", "shortest"),
    "timm-convnext": Pixels(160, CLIP_MEAN, CLIP_STD, "bicubic", "shortest"),
}


@pytest.fixture(scope="module", params=list(PIXELS))
def pipeline(request, data: Path, models: dict[str, list[str]], tmp_path_factory) -> dict:
    """One layout through extract and train (the run evaluates its head on the cache)."""
    layout = request.param
    cfg = config(data, models, layout)
    out = tmp_path_factory.mktemp(layout)
    extract(cfg, out / "cache.zarr", progress=False)
    result = train(cfg, cache=out / "cache.zarr", out=out / "run", progress=False)
    return {"layout": layout, "cfg": cfg, "cache": out / "cache.zarr", "run": out / "run", "report": result.report}


def test_every_layout_evaluates_and_predicts_on_videos(pipeline: dict, data: Path):
    """eval --videos rebuilds the checkpoint's tower from the backbone its config records and
    scores as the cache did; predict scores a video with it."""
    run = pipeline["run"]
    live = evaluate_checkpoint_on_videos(run, out=run / "eval-videos")
    assert live["mAP"] == pytest.approx(pipeline["report"]["mAP"], abs=1e-3)
    video = sorted((data / "videos").rglob("*.mp4"))[0]
    [prediction] = predict_videos(run / "last.pt", [video], device="cpu")
    assert prediction.error is None and prediction.scores.sum() == pytest.approx(1.0, abs=1e-4)


def test_the_cache_records_and_applies_the_models_own_pixels(pipeline: dict, data: Path):
    cfg, layout = pipeline["cfg"], pipeline["layout"]
    cache = FeatureCache(pipeline["cache"])
    pixels = PIXELS[layout]
    recorded = cache.config["pixels"]
    assert Pixels(**{**recorded, "mean": tuple(recorded["mean"]), "std": tuple(recorded["std"])}) == pixels
    tower = FrozenImageTower(create_clip(cfg.backbone)[0])
    assert cache.config["backbone"]["embed_dim"] == tower.embed_dim
    split = cache.split("test")
    with open_video(data / "videos" / split.clip_ids[0], "pyav") as video:  # the other decoder, as an oracle
        views = plan_views("test", 0, video.num_frames, video.height, video.width, cfg.sampling)
        unique, positions = union_indices(views)
        frames = video.get_frames(unique)
    rendered = render_views(frames, views, positions, pixels.size, pixels.mean, pixels.std, pixels.interpolation)
    expected = tower(rendered.flatten(0, 1))[0]
    torch.testing.assert_close(split.cls[0, 0].float(), expected.half().float(), atol=1e-2, rtol=1e-2)
    other = "bicubic" if pixels.interpolation == "bilinear" else "bilinear"
    assert not torch.equal(render_views(frames, views, positions, pixels.size, pixels.mean, pixels.std, other), rendered)


def test_overrides_and_the_image_size_check():
    assert (Config().sampling.normalization, Config().sampling.interpolation) == ("model", "model")
    model = PIXELS["local-dir"]
    sampling = Config().sampling
    sampling.image_size = 64
    assert rendered_pixels(sampling, model) == model
    sampling.normalization, sampling.interpolation = "imagenet", "bilinear"
    assert (rendered_pixels(sampling, model).mean[0], rendered_pixels(sampling, model).interpolation) == (0.485, "bilinear")
    sampling.normalization = ((0.4, 0.4, 0.4), (0.2, 0.2, 0.2))
    assert rendered_pixels(sampling, model).std == (0.2, 0.2, 0.2)
    sampling.image_size = 224
    with pytest.raises(ConfigError, match=r"sampling.image_size is 224, but the backbone takes 64-px images"):
        rendered_pixels(sampling, model)


def test_a_cache_from_another_backbone_is_refused(pipeline: dict, data: Path, models: dict[str, list[str]],
                                                   tmp_path: Path):
    other = "local-dir" if pipeline["layout"] != "local-dir" else "registered"
    with pytest.raises(CacheError, match=r"backbone.model="):
        train(config(data, models, other), cache=pipeline["cache"], out=tmp_path / "run", progress=False)


def test_end_to_end_on_a_timm_tower_is_refused_naming_the_native_vit_family(data: Path, models: dict[str, list[str]],
                                                                            tmp_path: Path):
    cfg = config(data, models, "timm-vit", "train.mode=e2e", "model.video_specific_prompt=false")
    with pytest.raises(AnimClipError, match=r"needs open_clip's native VisionTransformer family .* image tower is "
                                            r"TimmModel \(test_vit\): train it in cached mode"):
        train(cfg, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_patch_tokens_from_a_tower_without_them_are_refused(data: Path, models: dict[str, list[str]], tmp_path: Path):
    cfg = config(data, models, "timm-convnext", "backbone.patches=fp16")
    with pytest.raises(AnimClipError, match=r"image tower TimmModel \(test_convnext\) has no patch tokens"):
        extract(cfg, tmp_path / "cache.zarr", progress=False)


def test_a_model_with_its_own_weights_refuses_a_contradictory_pretrained(data: Path, models: dict[str, list[str]]):
    model = models["local-dir"][0]
    proc = run_cli("extract", "demo", "--out", "unused.zarr", "--set", f"data.annotations={data}",
                   "--set", f"data.root={data / 'videos'}", "--set", model, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines() == [
        f"error: backbone.pretrained='demo-world' contradicts backbone.model={model.split('=', 1)[1]!r}, which brings "
        "its own weights: set backbone.pretrained=null"]
    with pytest.raises(ConfigError, match=r"backbone.quick_gelu=true would turn the GELU"):
        create_clip(config(data, models, "local-dir", "backbone.quick_gelu=true").backbone)


def test_text_uses_the_models_tokenizer_and_context(data: Path, models: dict[str, list[str]]):
    cfg = config(data, models, "local-dir")
    fit = text_fit(cfg.backbone.model)
    assert fit.context_length == 32
    long_text = " ".join(f"The animal takes step {i} across the open grassland." for i in range(12))
    ours, clips = (class_texts(["Walk"], [[long_text]], split) for split in (fit, CLIP_TEXT))
    assert all(fit.count(s) <= 32 for s in ours.strings) and len(ours.strings) > len(clips.strings)
    clip, _ = create_clip(cfg.backbone)
    assert encode_texts(clip, ours.strings, cfg.backbone.model).shape == (len(ours.strings), 64)


def test_an_end_to_end_checkpoint_rebuilds_its_local_dir_tower(data: Path, models: dict[str, list[str]],
                                                              tmp_path: Path):
    """The checkpoint records ``local-dir:...`` as given; reading it back builds the same
    architecture and pixels, and the weights are the checkpoint's."""
    cfg = config(data, models, "local-dir", "train.mode=e2e")
    dataset = load_dataset(cfg.data)
    clip, _ = create_clip(cfg.backbone)
    vocab = {"action_text": encode_texts(clip, dataset.actions, cfg.backbone.model),
             "species_text": encode_texts(clip, dataset.species, cfg.backbone.model),
             "adjacency": torch.from_numpy(dataset.train_graph().adjacency())}
    model = end_to_end(cfg, **vocab).eval()
    path = save_checkpoint(tmp_path / "e2e.pt", model, cfg, vocab={"actions": dataset.actions,
                                                                   "species": dataset.species})
    ckpt = load_checkpoint(path)
    assert ckpt.config.backbone.model == cfg.backbone.model
    _, tower, _ = head_and_tower(ckpt)
    assert tower.pixels == PIXELS["local-dir"]
    images = torch.randn(T, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(tower(images)[0].numpy(), model.encode_frames(images[None]).cls[0].numpy(),
                                   atol=1e-5)
    video = sorted((data / "videos").rglob("*.mp4"))[0]
    assert predict_videos(path, [video], species=[dataset.species[0]], device="cpu")[0].error is None
