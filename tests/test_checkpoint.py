"""Checkpoints: our format round-trips, the authors' files convert (both ways), and a checkpoint
that needs more than plain data is refused, never unpickled unsafely."""

from __future__ import annotations

import errno
import os
import signal
import sys
import types
from pathlib import Path

import pytest
import torch
from processes import file_size_limit, run_cli

from anim_clip.config import BackboneConfig, Config, config_to_dict, say_renamed
from anim_clip.data.graph import SpeciesActionGraph
from anim_clip.errors import AnimClipError
from anim_clip.models import (
    AnimalCLIP,
    AnimalCLIPHead,
    FrameFeatures,
    convert_release_checkpoint,
    convert_to_release,
    load_checkpoint,
    load_release_model,
    load_untrusted,
    model_from_checkpoint,
    save_checkpoint,
)
from anim_clip.models.backbone import create_clip
from anim_clip.models.checkpoint import save_into
from anim_clip.models.inputs import HeadInputs
from anim_clip.models.release import RELEASE_INPUTS, UNUSED_RELEASE_KEYS, release_head_config, release_to_ours

TOL = {"atol": 1e-4, "rtol": 1e-4}  # the parity bar; ``fixture`` (conftest) is the authors' forward pass


def fixture_adjacency(fixture: dict) -> torch.Tensor:
    c, a = fixture["config"]["C"], fixture["config"]["A"]
    pairs = [(int(s), int(t) - a) for s, t in fixture["inputs"]["edges"].tolist() if s < a <= t]
    return torch.from_numpy(SpeciesActionGraph.from_pairs(pairs, a, c).adjacency())


def fixture_head(fixture: dict) -> AnimalCLIPHead:
    """The release head as trained from the cache: its weights plus a vocabulary."""
    state = release_to_ours(fixture["state_dict"])
    cfg, dims = release_head_config(state)
    head = AnimalCLIPHead(
        cfg,
        inputs=RELEASE_INPUTS,
        **dims,
        adjacency=fixture_adjacency(fixture),
        action_text=fixture["outputs"]["text_features"],
        species_text=fixture["outputs"]["animal_text_features"],
    )
    head.load_state_dict({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}, strict=False)
    return head.eval()


def head_logits(head: AnimalCLIPHead, fixture: dict) -> torch.Tensor:
    with torch.no_grad():
        return head(FrameFeatures(fixture["outputs"]["frame_features"]), fixture["inputs"]["species"]).logits


class CfgNode(dict):
    """Stands in for ``yacs.config.CfgNode``: a dict subclass with yacs's instance attributes."""

    def __init__(self, init=None):
        super().__init__(init or {})
        self.__dict__.update(__immutable__=False, __deprecated_keys__=set(), __renamed_keys__={}, __new_allowed__=False)


def write_release_checkpoint(path: Path, state: dict) -> Path:
    """An authors'-style file: DDP ``module.`` keys, optimiser state, a real ``yacs.config.CfgNode``
    (the class lives in a throwaway ``yacs.config`` module only while saving)."""
    yacs, yacs_config = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    yacs.config, yacs_config.CfgNode = yacs_config, CfgNode
    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config = CfgNode({"DATA": CfgNode({"NUM_FRAMES": 4, "DATASET": "AK"}), "MODEL": CfgNode({"ARCH": "ViT-B/16"})})
    sys.modules.update({"yacs": yacs, "yacs.config": yacs_config})
    try:
        torch.save(
            {
                "model": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 8e-6}]},
                "lr_scheduler": {"last_epoch": 29},
                "max_accuracy": 0.42,
                "epoch": 29,
                "config": config,
            },
            path,
        )
    finally:
        del sys.modules["yacs"], sys.modules["yacs.config"]
    return path


class Payload:
    """Unpickling this would create a file: a stand-in for a malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


class ShellPayload(Payload):
    """The same through a shell: torch's refusal of this one advises retrying with weights_only=False."""

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _backbone_weights(path: Path) -> None:
    create_clip(BackboneConfig(model="anim-clip-tiny", pretrained=str(path)))


# ---- refusing unsafe files ------------------------------------------------------------------


@pytest.mark.parametrize("payload, calls", [(Payload, "io.open"), (ShellPayload, "posix.system")])
def test_a_checkpoint_needing_code_is_refused_with_one_line(tmp_path, payload, calls):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"a": torch.zeros(1)}, "x": payload(marker)}, path)
    for read in (load_untrusted, load_checkpoint, lambda p: convert_release_checkpoint(p, tmp_path / "out.pt"),
                 _backbone_weights):
        with pytest.raises(AnimClipError) as err:
            read(path)
        message = str(err.value)
        assert message.startswith(f"{path}: refused to load: unpickling it would call or build {calls}")
        assert "weights_only=True" in message and "\n" not in message
        assert "weights_only=False" not in message and "trusted" not in message  # never torch's advice
    assert not marker.exists()
    assert not (tmp_path / "out.pt").exists()


def test_an_empty_file_is_named_as_such(tmp_path):
    empty = tmp_path / "last.pt"
    empty.touch()
    for read in (load_untrusted, load_checkpoint, _backbone_weights):
        with pytest.raises(AnimClipError, match=r"last.pt: empty file \(0 bytes\), not a checkpoint"):
            read(empty)


def test_a_full_disk_while_saving_is_the_system_error_not_torchs(tmp_path, fixture):
    path = tmp_path / "head.pt"
    with file_size_limit(16384), pytest.raises(OSError) as err:  # EFBIG, as ENOSPC; torch: "unexpected pos"
        save_checkpoint(path, fixture_head(fixture), Config())
    assert err.value.errno == errno.EFBIG and err.value.filename == str(path) and list(tmp_path.iterdir()) == []


def test_ctrl_c_while_saving_stays_an_interruption_not_torchs_error(tmp_path, fixture):
    """A SIGINT arriving while torch writes the checkpoint is raised as the ``KeyboardInterrupt`` it
    is (the command line then says what it kept), not torch's "unexpected pos" ``RuntimeError``."""

    class SignalledMidway:
        def __init__(self, file):
            self.file, self.writes = file, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                os.kill(os.getpid(), signal.SIGINT)  # Python's own handler: KeyboardInterrupt at the next step
            return self.file.write(data)

        def flush(self):
            self.file.flush()

    payload = {"model": fixture_head(fixture).state_dict()}
    with open(tmp_path / "head.pt", "wb") as f, pytest.raises(KeyboardInterrupt):
        save_into(payload, SignalledMidway(f))


def test_unreadable_and_foreign_files_are_clear_errors(tmp_path, fixture):
    with pytest.raises(AnimClipError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AnimClipError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    release = write_release_checkpoint(tmp_path / "release.pth", fixture["state_dict"])
    with pytest.raises(AnimClipError, match="convert it first"):
        load_checkpoint(release)


# ---- the authors' checkpoints -----------------------------------------------------------------


def test_release_checkpoint_converts_and_reproduces_the_release(tmp_path, fixture):
    src = write_release_checkpoint(tmp_path / "best.pth", fixture["state_dict"])
    actions = [f"action_{i}" for i in range(7)]
    species = [f"animal_{i}" for i in range(5)]
    dst = convert_release_checkpoint(src, tmp_path / "ours.pt", actions=actions, species=species)
    ckpt = load_checkpoint(dst)
    assert ckpt.kind == "e2e" and ckpt.vocab["actions"] == actions
    assert ckpt.config.sampling.num_frames == 4 and ckpt.config.sampling.normalization == "imagenet"
    assert ckpt.config.backbone.model == "custom" and ckpt.config.backbone.pretrained is None
    release_config = {"DATA": {"NUM_FRAMES": 4, "DATASET": "AK"}, "MODEL": {"ARCH": "ViT-B/16"}}
    assert ckpt.extra["release"]["config"] == release_config
    assert ckpt.extra["release"]["epoch"] == 29

    model = model_from_checkpoint(ckpt).eval()
    inputs, outputs = fixture["inputs"], fixture["outputs"]
    with torch.no_grad():
        logits, video = model.forward_release(
            inputs["video"], inputs["text_tokens"], inputs["animal_text_tokens"], inputs["species"], inputs["edges"]
        )
    assert torch.allclose(logits, outputs["logits"], **TOL)
    assert torch.allclose(video, outputs["video_features_final"], **TOL)

    head = model_from_checkpoint(ckpt, "cached").eval()  # the same weights, trained from a cache
    head.set_vocabulary(outputs["text_features"], outputs["animal_text_features"], fixture_adjacency(fixture))
    assert torch.allclose(head_logits(head, fixture), outputs["logits"], **TOL)


def test_conversion_back_to_the_release_format_round_trips(tmp_path, fixture):
    src = write_release_checkpoint(tmp_path / "a.pth", fixture["state_dict"])
    ours = convert_release_checkpoint(src, tmp_path / "b.pt")
    back = convert_to_release(ours, tmp_path / "c.pth")
    state = load_untrusted(back)["model"]
    expected = {k: v for k, v in fixture["state_dict"].items() if k not in UNUSED_RELEASE_KEYS}
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    load_release_model(state, num_frames=4)


def test_release_state_dicts_load_strictly(fixture):
    state = dict(fixture["state_dict"])
    with pytest.raises(AnimClipError, match="integrates 4 frames, not 8"):
        load_release_model(state, num_frames=8)
    with pytest.raises(AnimClipError, match="unknown keys extra.weight"):
        load_release_model(state | {"extra.weight": torch.zeros(1)})
    del state["visual.transformer.resblocks.1.message_ln.weight"]
    with pytest.raises(AnimClipError, match=r"missing visual\.transformer\.resblocks\.1\.message_ln\.weight"):
        load_release_model(state)


def test_only_release_expressible_models_convert_back(tmp_path, fixture):
    head_only = save_checkpoint(tmp_path / "head.pt", fixture_head(fixture), Config())
    with pytest.raises(AnimClipError, match="head-only"):
        convert_to_release(head_only, tmp_path / "x.pth")
    model = load_release_model(fixture["state_dict"])
    model.head.inputs = HeadInputs("zero-shot")  # as a run with model.species_source=predicted builds it
    e2e = save_checkpoint(tmp_path / "e2e.pt", model, Config())
    with pytest.raises(AnimClipError, match=r"zero-shot species \(it takes annotated ones\)"):
        convert_to_release(e2e, tmp_path / "x.pth")
    model.head.inputs = HeadInputs("annotated", patches=True)
    e2e = save_checkpoint(tmp_path / "e2e.pt", model, Config())
    with pytest.raises(AnimClipError, match="video_specific_prompt"):
        convert_to_release(e2e, tmp_path / "x.pth")


# ---- our format -----------------------------------------------------------------------------


def test_head_checkpoint_round_trip(tmp_path, fixture):
    head = fixture_head(fixture)
    cfg = Config()
    vocab = {"actions": ["a"], "species": ["s"]}
    path = save_checkpoint(tmp_path / "run" / "head.pt", head, cfg, vocab=vocab, extra={"epoch": 3})
    assert [p.name for p in path.parent.iterdir()] == ["head.pt"]  # written atomically, nothing left behind
    ckpt = load_checkpoint(path)
    assert ckpt.kind == "head" and ckpt.extra == {"epoch": 3} and ckpt.config.model == head.cfg
    restored = model_from_checkpoint(ckpt).eval()
    assert isinstance(restored, AnimalCLIPHead)
    assert torch.equal(head_logits(restored, fixture), head_logits(head, fixture))
    with pytest.raises(ValueError, match="model"):
        save_checkpoint(tmp_path / "x.pt", head, cfg, extra={"model": 1})


def test_the_head_inputs_are_stored_and_older_files_derive_them_from_their_config(tmp_path, fixture):
    """A checkpoint stores what its head takes; a file written before that was stored (``external_species``
    among the head's dims) gets the inputs its config gives, as the run that wrote it derived them."""
    head = fixture_head(fixture)
    head.inputs = HeadInputs("predictor")  # as a run with species.model and predicted species builds it
    cfg = Config()
    cfg.model.species_source, cfg.species.model = "predicted", "anim-clip-tiny"
    path = save_checkpoint(tmp_path / "head.pt", head, cfg)
    assert load_checkpoint(path).inputs == HeadInputs("predictor")
    assert model_from_checkpoint(load_checkpoint(path)).inputs == HeadInputs("predictor")
    payload = torch.load(path, weights_only=True)
    del payload["inputs"]
    payload["config"], payload["head"]["external_species"] = config_to_dict(cfg), True
    torch.save(payload, tmp_path / "older.pt")
    older = load_checkpoint(tmp_path / "older.pt")
    assert older.inputs == HeadInputs("predictor") and "external_species" not in older.head_dims
    cfg.species.model = None  # predicted species without a predictor: the head's own zero-shot
    payload["config"], payload["head"]["external_species"] = config_to_dict(cfg), False
    torch.save(payload, tmp_path / "older.pt")
    assert load_checkpoint(tmp_path / "older.pt").inputs == HeadInputs("zero-shot")


def test_a_checkpoint_saved_with_a_renamed_config_key_loads_saying_so(tmp_path, fixture, capsys):
    """A checkpoint saved before ``backbone.precision`` became ``runtime.precision`` keeps its setting."""
    path = save_checkpoint(tmp_path / "head.pt", fixture_head(fixture), Config())
    payload = torch.load(path, weights_only=True)
    payload["config"]["backbone"]["precision"] = "bf16"  # the layout such a checkpoint has
    del payload["config"]["runtime"]
    torch.save(payload, path)
    say_renamed.cache_clear()
    capsys.readouterr()
    assert load_checkpoint(path).config.runtime.precision == "bf16"
    assert capsys.readouterr().out.splitlines() == ["backbone.precision is deprecated; use runtime.precision"]


def test_a_head_checkpoint_goes_end_to_end_on_the_configured_backbone(tmp_path, fixture):
    cfg = Config()
    cfg.backbone.model, cfg.backbone.pretrained = "anim-clip-tiny", None  # 128-d, like the fixture's head
    head = fixture_head(fixture)
    model = model_from_checkpoint(load_checkpoint(save_checkpoint(tmp_path / "h.pt", head, cfg)), "e2e")
    assert isinstance(model, AnimalCLIP)
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in model.head.state_dict().items())
    assert model(torch.randn(2, 4, 3, 64, 64), fixture["inputs"]["species"]).logits.shape == (2, 7)



@pytest.mark.parametrize("damage, message", [
    ("not a tensor", "not a tensor in the state dict: module.logit_scale, module.ln_final.bias"),
    ("nan", "NaN or inf in module.text_projection: the checkpoint is damaged or its training diverged; convert another one"),
    ("inf", "NaN or inf in module.text_projection: the checkpoint is damaged or its training diverged; convert another one"),
])
def test_a_release_checkpoint_holding_other_values_than_finite_tensors_is_refused(tmp_path, fixture, damage, message):
    state = dict(fixture["state_dict"])
    if damage == "not a tensor":
        state.update({"logit_scale": 4.6, "ln_final.bias": [0.0] * 4})
    else:
        state["text_projection"] = state["text_projection"].clone()
        state["text_projection"][0, 1] = float(damage)
    src = write_release_checkpoint(tmp_path / "best.pth", state)
    with pytest.raises(AnimClipError) as err:
        convert_release_checkpoint(src, tmp_path / "ours.pt")
    assert str(err.value) == f"{src}: {message}" and not (tmp_path / "ours.pt").exists()
    if damage == "nan":  # as the user meets it
        proc = run_cli("convert-release", str(src), str(tmp_path / "ours.pt"), check=False)
        assert proc.returncode == 2 and proc.stdout.strip().splitlines() == [f"error: {src}: {message}"]
