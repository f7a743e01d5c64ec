"""Config files, dotted overrides and their error messages."""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

import pytest

from anim_clip.config import CONFIG_DIR, Config, config_from_dict, config_to_dict, load_config, save_config, say_renamed
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


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=-1e-4", "'train.lr': -0.0001 is out of range; it must be >= 0"),  # gradient ascent
        ("train.head_lr=-8e-5", "'train.head_lr': -8e-05 is out of range; it must be >= 0"),
        ("train.epochs=0", "'train.epochs': 0 is out of range; it must be >= 1"),
        ("train.batch_size=-2", "'train.batch_size': -2 is out of range; it must be >= 1"),
        ("train.val_fraction=1", "'train.val_fraction': 1.0 is out of range; it must be >= 0 and < 1"),
        ("train.betas=[0.9, 1.5]", "'train.betas': (0.9, 1.5) is out of range; each must be >= 0 and < 1"),
        ("train.seed=-1", "'train.seed': -1 is out of range; it must be >= 0 and <= 4294967295"),
        ("train.grad_clip=0", "'train.grad_clip': 0.0 is out of range; it must be > 0"),
        ("train.num_workers=-1", "'train.num_workers': -1 is out of range; it must be >= 0"),
        ("sampling.num_frames=0", "'sampling.num_frames': 0 is out of range; it must be >= 1"),
        ("sampling.test_clips=0", "'sampling.test_clips': 0 is out of range"),
        ("backbone.batch_frames=0", "'backbone.batch_frames': 0 is out of range"),
        ("model.logit_scale=0", "'model.logit_scale': 0.0 is out of range; it must be > 0"),
        ("model.mit_layers=-1", "'model.mit_layers': -1 is out of range; it must be >= 0"),
        ("eval.batch_size=0", "'eval.batch_size': 0 is out of range"),
        ("train.lr=nan", "'train.lr': expected a finite number, got nan"),
        ("train.warmup_epochs=.inf", "'train.warmup_epochs': expected a finite number, got inf"),
        ("sampling.normalization=[[0.5, 0.5, .nan], [0.5, 0.5, 0.5]]", "expected a finite number, got nan"),
        ("sampling.resize=100", "'sampling.image_size' (224) must not exceed 'sampling.resize' (100)"),
        ("eval.tail_max=600", "'eval.tail_max' (600) must not exceed 'eval.head_min' (500)"),
    ],
)
def test_numbers_out_of_range_are_refused_naming_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("ak", [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bounds_are_kept_and_every_number_field_has_a_range():
    cfg = load_config("ak", ["train.lr=0", "train.num_workers=0", "model.mit_layers=0", "train.val_fraction=0",
                             "train.seed=4294967295", "train.mixup_alpha=0", "sampling.resize=224"])
    assert (cfg.train.lr, cfg.train.num_workers, cfg.model.mit_layers, cfg.train.seed) == (0.0, 0, 0, 2**32 - 1)
    unranged = [f"{s.name}.{f.name}" for s in dataclasses.fields(Config) for f in dataclasses.fields(s.default_factory)
                if _numeric(typing.get_type_hints(s.default_factory)[f.name]) and "range" not in f.metadata]
    assert unranged == ["sampling.normalization"]  # finite; its std is checked where the transform is built


def _numeric(tp) -> bool:
    """Whether a field's type takes numbers (a Literal's choices are checked as choices)."""
    return tp in (int, float) or (typing.get_origin(tp) is not Literal and any(_numeric(a) for a in typing.get_args(tp)))


def test_a_file_value_out_of_range_names_the_file_and_a_saved_one_is_checked_too(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: demo\ntrain:\n  lr: -0.001\n")
    with pytest.raises(ConfigError, match=f"{bad}: 'train.lr': -0.001 is out of range; it must be >= 0"):
        load_config(bad)
    tree = config_to_dict(load_config("demo"))
    tree["sampling"]["num_frames"] = 0
    with pytest.raises(ConfigError, match="'sampling.num_frames': 0 is out of range"):
        config_from_dict(tree)


DEPRECATED = "backbone.precision is deprecated; use runtime.precision"


def test_a_renamed_key_still_loads_from_a_file_and_set_saying_so_in_one_line(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text("extends: demo\nbackbone:\n  precision: bf16\n")
    say_renamed.cache_clear()
    assert load_config(old).runtime.precision == "bf16"
    assert capsys.readouterr().out.splitlines() == [DEPRECATED]
    assert load_config(old).runtime.precision == "bf16"
    assert capsys.readouterr().out == ""  # said once per process (a sweep reads its config once per run)
    say_renamed.cache_clear()
    assert load_config("demo", ["backbone.precision=bf16"]).runtime.precision == "bf16"
    assert capsys.readouterr().out.splitlines() == [DEPRECATED]
    assert load_config(old, ["runtime.precision=auto"]).runtime.precision == "auto"  # the later setting wins
    capsys.readouterr()
    assert load_config("demo", ["runtime.precision=bf16"]).runtime.precision == "bf16"
    assert capsys.readouterr().out == ""  # the new name is said nothing about
    with pytest.raises(ConfigError, match="'runtime.precision': 'fp16' is not one of"):  # checked as the new key
        load_config("demo", ["backbone.precision=fp16"])
    for both in (["backbone.precision=bf16", "runtime.precision=fp32"], ["runtime.precision=fp32", "backbone.precision=bf16"]):
        with pytest.raises(ConfigError, match="name the same setting .* keep --set runtime.precision"):
            load_config("demo", both)  # which one won would depend on the order: refused, whichever it is


def test_a_saved_config_with_a_renamed_key_loads(capsys):
    tree = config_to_dict(Config())
    tree["backbone"]["precision"] = tree.pop("runtime")["precision"] = "fp32"
    say_renamed.cache_clear()
    assert config_from_dict(tree).runtime.precision == "fp32"
    assert capsys.readouterr().out.splitlines() == [DEPRECATED]

