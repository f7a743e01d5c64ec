"""Parity with the authors' released model on tests/fixtures/reference_parity_small.pt (see its README).

Every output of the release's forward pass is reproduced within 1e-4 (fp32, CPU); the graph
built by our parsers equals the fixture's edges; the cached-mode head fed the fixture's frame
features reproduces its logits (one model for cached and end-to-end training). The last test
shows the comparison is sharp: perturbing any live parameter of any module breaks it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anim_clip.config import ModelConfig
from anim_clip.data.formats import read_class_list, read_relation
from anim_clip.data.graph import SpeciesActionGraph
from anim_clip.models import AnimalCLIPHead, FrameFeatures, load_release_model
from anim_clip.models.release import RELEASE_INPUTS, release_head_config, release_to_ours

TOL = {"atol": 1e-4, "rtol": 1e-4}  # the parity bar; ``fixture`` (conftest) is the authors' forward pass


def release_outputs(state_dict: dict, fixture: dict) -> dict[str, torch.Tensor]:
    """Every checked output of our model loaded from a release state dict."""
    model = load_release_model(state_dict, num_frames=fixture["config"]["T"])
    inputs = fixture["inputs"]
    with torch.no_grad():
        frames = model.encode_frames(inputs["video"]).cls
        logits, video = model.forward_release(
            inputs["video"], inputs["text_tokens"], inputs["animal_text_tokens"], inputs["species"], inputs["edges"]
        )
        return {
            "frame_features": frames,
            "video_features_mit": model.head.mit(frames),
            "text_features": model.encode_text(inputs["text_tokens"]),
            "animal_text_features": model.encode_text(inputs["animal_text_tokens"]),
            "logits": logits,
            "video_features_final": video,
        }


def graph_from_release_files(fixture: dict, tmp_path: Path) -> SpeciesActionGraph:
    (tmp_path / "relation.txt").write_text(fixture["relation_txt"])
    (tmp_path / "label.csv").write_text(fixture["label_csv"])
    actions = read_class_list(tmp_path / "label.csv")
    relation = read_relation(tmp_path / "relation.txt", num_actions=len(actions))
    return SpeciesActionGraph.from_lists([ids for _, ids in relation], len(actions))


def test_graph_from_relation_file_equals_fixture_edges(fixture, tmp_path):
    graph = graph_from_release_files(fixture, tmp_path)
    cfg = fixture["config"]
    assert (graph.num_species, graph.num_actions) == (cfg["A"], cfg["C"])
    expected = fixture["inputs"]["edges"].numpy()
    expected = expected[np.lexsort((expected[:, 1], expected[:, 0]))]
    assert np.array_equal(graph.edges(), expected)


def test_every_output_matches_the_release(fixture):
    ours = release_outputs(fixture["state_dict"], fixture)
    assert set(ours) == set(fixture["outputs"])
    for name, expected in fixture["outputs"].items():
        assert ours[name].shape == expected.shape, name
        error = (ours[name] - expected).abs().max()
        assert torch.allclose(ours[name], expected, **TOL), f"{name}: max abs error {error:.2e}"


def test_cached_head_on_the_fixture_frame_features_reproduces_the_logits(fixture, tmp_path):
    """The head alone (as trained from the cache), built from the release weights, our graph
    parser and the fixture's text embeddings, gives the release's logits."""
    state = release_to_ours(fixture["state_dict"])
    cfg, dims = release_head_config(state)
    outputs = fixture["outputs"]
    head = AnimalCLIPHead(
        cfg,
        inputs=RELEASE_INPUTS,
        **dims,
        adjacency=torch.from_numpy(graph_from_release_files(fixture, tmp_path).adjacency()),
        action_text=outputs["text_features"],
        species_text=outputs["animal_text_features"],
    )
    head_state = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    head.load_state_dict(head_state | {f"vocab.{k}": v for k, v in head.vocab.state_dict().items()})
    with torch.no_grad():
        out = head.eval()(FrameFeatures(outputs["frame_features"]), fixture["inputs"]["species"])
    assert torch.allclose(out.logits, outputs["logits"], **TOL)
    assert torch.allclose(out.video, outputs["video_features_final"], **TOL)
    assert head.cfg == ModelConfig(logit_scale=cfg.logit_scale)  # the release's options are our defaults


LIVE_PARAMETERS = [
    "visual.conv1.weight",
    "visual.transformer.resblocks.0.message_fc.weight",
    "visual.transformer.resblocks.1.message_attn.in_proj_weight",
    "visual.transformer.resblocks.1.message_ln.bias",
    "visual.transformer.resblocks.1.attn.out_proj.weight",
    "visual.ln_post.weight",
    "visual.proj",
    "token_embedding.weight",
    "transformer.resblocks.1.mlp.c_fc.weight",
    "text_projection",
    "mit.positional_embedding",
    "mit.resblocks.0.attn.in_proj_weight",
    "mit.resblocks.0.mlp.c_proj.weight",
    "graph.layers.0.weight",
    "graph.layers.0.norm.bias",
    "graph.layers.1.weight",
    "graph.layers.1.norm.weight",
    "prompts_generator1.alpha",
    "prompts_generator1.norm.weight",
    "prompts_generator1.decoder.0.cross_attn.v_proj.weight",
    "prompts_generator1.decoder.2.mlp.0.weight",
    "prompts_generator1.decoder.1.norm3.bias",
    "prompts_generator2.alpha",
    "prompts_generator2.decoder.0.cross_attn.proj.bias",
    "prompts_generator2.decoder.2.mlp.3.weight",
]
DEAD_PARAMETERS = [
    "prompts_generator1.decoder.0.cross_attn.q_proj.weight",
    "prompts_generator2.decoder.1.cross_attn.k_proj.weight",
    "prompts_generator1.decoder.2.norm1.weight",
    "prompts_visual_proj",
]


@pytest.mark.parametrize("key", LIVE_PARAMETERS + DEAD_PARAMETERS)
def test_perturbing_a_parameter_breaks_parity_unless_it_is_dead(fixture, key):
    state = dict(fixture["state_dict"])
    state[key] = state[key] + 0.05 * torch.randn(state[key].shape, generator=torch.Generator().manual_seed(0))
    ours = release_outputs(state, fixture)
    worst = max((ours[k] - fixture["outputs"][k]).abs().max().item() for k in ours)
    if key in DEAD_PARAMETERS:
        assert worst < 1e-4
    else:
        assert worst > 1e-3
