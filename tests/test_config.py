"""Config files, dotted overrides and their error messages."""

from __future__ import annotations

import pytest

from anim_clip.config import CONFIG_DIR, config_from_dict, config_to_dict, load_config, save_config
from anim_clip.errors import ConfigError


def test_shipped_configs_load():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"ak", "ak-cached", "mammalnet", "mammalnet-cached", "lote", "lote-cached", "demo"} <= set(names)
    for name in names:
        load_config(name)


def test_release_recipe_values():
    """docs/method.md §6 / Appendix C, item 8."""
    cfg = load_config("ak")
    assert cfg.train.mode == "e2e" and cfg.data.graph == "release"
    assert (cfg.train.lr, cfg.train.head_lr, cfg.train.min_lr) == (8e-6, 8e-5, 8e-8)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.accumulation, cfg.train.warmup_epochs) == (30, 16, 4, 5)
    assert cfg.train.betas == (0.9, 0.98) and cfg.train.weight_decay == 1e-3 and cfg.train.loss == "ce"
    assert (cfg.model.mit_layers, cfg.model.prompt_layers, cfg.model.prompts_alpha) == (1, 3, 0.1)
    assert (cfg.sampling.test_clips, cfg.sampling.test_crops, cfg.sampling.normalization) == (4, 3, "imagenet")
    assert cfg.sampling.interpolation == "bilinear"  # the release's resize (§4.5)
    cached = load_config("ak-cached")  # extends ak, changes only what the cache needs
    assert cached.train.mode == "cached"
    assert (cached.sampling.normalization, cached.sampling.interpolation) == ("model", "model")  # the backbone's own
    assert cached.train.lr == cfg.train.lr and cached.data.format == "ak"
    assert load_config("lote").data.format == "lote" and load_config("mammalnet-cached").data.format == "mammalnet"


def test_overrides_are_typed():
    cfg = load_config("ak", ["train.lr=1e-4", "model.refine=off", "train.betas=[0.8, 0.9]",
                             "data.unseen_species=Frog,Fox", "sampling.test_crops=1", "backbone.pretrained=null"])
    assert cfg.train.lr == 1e-4 and cfg.model.refine is False and cfg.train.betas == (0.8, 0.9)
    assert cfg.data.unseen_species == ["Frog", "Fox"] and cfg.sampling.test_crops == 1
    assert cfg.backbone.pretrained is None


def test_explicit_normalization_is_two_triples():
    cfg = load_config("ak", ["sampling.normalization=[[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]"])
    assert cfg.sampling.normalization == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert config_to_dict(cfg)["sampling"]["normalization"] == [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]  # YAML-safe
    with pytest.raises(ConfigError, match="'sampling.normalization'"):
        load_config("ak", ["sampling.normalization=[[0.5, 0.5], [0.5, 0.5]]"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown key 'train.lrr'; did you mean 'train.lr'?"),
        ("trian.lr=1", "did you mean 'train.lr'?"),
        ("foo=1", "sections are: data, sampling"),
        ("train.xyzzy=1", "'train' has: mode, epochs"),
        ("model.pooling=avg", "'model.pooling': 'avg' is not one of 'max', 'mean'"),
        ("train.epochs=1.5", "'train.epochs': expected an integer"),
        ("model.refine=maybe", "expected true/false"),
        ("train.betas=0.9", "expected a list"),
        ("train.lr", "expected section.key=value"),
    ],
)
def test_override_errors(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("ak", [override])
    assert message in str(err.value)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=f"{bad}: unknown key 'train.lrr'; did you mean 'train.lr'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config file; shipped configs are: ak"):
        load_config("nonexistent")
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(loop)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config("ak-cached", ["train.lr=3e-5", "model.refine=false"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(path) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg
