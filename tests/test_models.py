"""Shapes, invariances and ablation switches of the Animal-CLIP modules (tiny sizes, CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from anim_clip.config import Config, ModelConfig
from anim_clip.errors import AnimClipError
from anim_clip.models import AnimalCLIP, AnimalCLIPHead, FrameFeatures, end_to_end, parameter_summary, pool_text
from anim_clip.models.graph_refine import BipartiteGraph, GraphRefinement, adjacency_from_edges
from anim_clip.models.inputs import HeadInputs
from anim_clip.models.mit import MultiFrameIntegration
from anim_clip.models.prompts import PromptGenerator

A, C, D, T, W, N = 6, 5, 128, 4, 64, 9  # species, actions, embedding, frames, patch width, patches


def random_adjacency(gen: torch.Generator, a: int = A, c: int = C) -> torch.Tensor:
    """Bipartite species–action graph with self-loops; species 0 and action 0 have no edges."""
    mask = torch.rand(a, c, generator=gen) < 0.4
    mask[0], mask[:, 0] = False, False
    adj = torch.eye(a + c)
    adj[:a, a:], adj[a:, :a] = mask.float(), mask.T.float()
    return adj


def make_head(cfg: ModelConfig | None = None, seed: int = 0, inputs: HeadInputs | None = None) -> AnimalCLIPHead:
    """A head on random text and graph; its inputs as a run with ``cfg`` (and no species predictor) has them."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cfg = cfg or ModelConfig()
    return AnimalCLIPHead(
        cfg,
        inputs=inputs or HeadInputs.of_config(Config(model=cfg)),
        embed_dim=D,
        num_frames=T,
        adjacency=random_adjacency(gen),
        action_text=torch.randn(C, D, generator=gen),
        species_text=torch.randn(A, D, generator=gen),
        patch_width=W,
    )


def make_batch(b: int, seed: int = 1) -> tuple[FrameFeatures, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = FrameFeatures(torch.randn(b, T, D, generator=gen), torch.randn(b, T, N, W, generator=gen))
    species = (torch.rand(b, A, generator=gen) < 0.3).float()
    species[0] = 0  # one clip without species
    return features, species


def dense_refine(ref: GraphRefinement, action_text, species_text, species, weights):
    """The release's computation, every node of every clip: the reference for the fast path."""
    a = species_text.shape[0]
    x = torch.cat([species[:, :, None] * species_text, action_text.expand(species.shape[0], -1, -1)], 1)
    h = ref.layers[0].post(weights @ x @ ref.layers[0].weight)
    out = ref.layers[1].post(weights @ h @ ref.layers[1].weight)[:, a:]
    return action_text + out if ref.residual else out


def tiny_clip() -> CLIP:
    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=2, width=W, patch_size=8, image_size=24)
    text = CLIPTextCfg(context_length=16, vocab_size=100, width=64, heads=1, layers=1)
    return CLIP(D, vision, text, quick_gelu=True)


# ---- text pooling ---------------------------------------------------------------------------


def test_pool_text_max_and_mean():
    emb = torch.tensor([[1.0, 5.0], [3.0, 1.0], [2.0, 2.0]])
    owner = torch.tensor([0, 0, 1])
    assert torch.equal(pool_text(emb, owner, 2, "max"), torch.tensor([[3.0, 5.0], [2.0, 2.0]]))
    assert torch.equal(pool_text(emb, owner, 2, "mean"), torch.tensor([[2.0, 3.0], [2.0, 2.0]]))
    with pytest.raises(AnimClipError, match=r"without: \[2\]"):
        pool_text(emb, owner, 3)


# ---- MIT and prompt generators --------------------------------------------------------------


def test_mit_refuses_an_embedding_narrower_than_one_attention_head():
    with pytest.raises(AnimClipError, match="at least 64; this backbone's is 32"):
        MultiFrameIntegration(T, 32, layers=1)
    assert MultiFrameIntegration(T, 32, layers=0)(torch.randn(2, T, 32)).shape == (2, 32)  # the mean ablation


def test_mit_shapes_mean_ablation_and_frame_check():
    frames = torch.randn(3, T, D)
    assert MultiFrameIntegration(T, D, 1)(frames).shape == (3, D)
    assert torch.allclose(MultiFrameIntegration(T, D, 0)(frames), frames.mean(1))
    with pytest.raises(AnimClipError, match="4 frames"):
        MultiFrameIntegration(T, D, 1)(torch.randn(3, T + 1, D))


def test_single_token_generator_equals_literal_attention():
    """With one key the attention weight is exactly 1; two copies of the key give the same."""
    gen = PromptGenerator(D, 2, 0.1, single_token_context=True)
    literal = PromptGenerator(D, 2, 0.1, single_token_context=False)
    literal.load_state_dict(gen.state_dict())
    for p in gen.parameters():
        torch.nn.init.normal_(p, std=0.1)
    literal.load_state_dict(gen.state_dict())
    queries, token = torch.randn(3, C, D), torch.randn(3, 1, D)
    assert torch.allclose(gen(queries, token), literal(queries, torch.cat([token, token], 1)), atol=1e-5)
    with pytest.raises(ValueError, match="one token"):
        gen(queries, torch.cat([token, token], 1))


# ---- graph refinement -----------------------------------------------------------------------


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("kind", ["multi-hot", "mixup", "softmax", "none"])
def test_fast_refinement_equals_dense(normalized: bool, kind: str):
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    adj = random_adjacency(gen, 9, 7)
    graph = BipartiteGraph(adj, 9, normalized=normalized).double()
    scale = adj.sum(1).rsqrt() if normalized else torch.ones(16)
    weights = scale[:, None] * adj * scale[None, :]  # in float32, as the graph derives them
    ref = GraphRefinement(32, 16, residual=normalized).double()
    torch.nn.init.normal_(ref.layers[1].norm.weight)  # the residual variant starts at gain 0
    action_text = torch.randn(7, 32, dtype=torch.float64, requires_grad=True)
    species_text = torch.randn(9, 32, dtype=torch.float64, requires_grad=True)
    species = {
        "multi-hot": (torch.rand(5, 9, generator=gen) < 0.3).double(),
        "mixup": torch.rand(5, 9, generator=gen).double() * (torch.rand(5, 9, generator=gen) < 0.4),
        "softmax": torch.randn(5, 9, generator=gen).double().softmax(-1),
        "none": torch.zeros(5, 9, dtype=torch.float64),
    }[kind]
    probe = torch.randn(5, 7, 32, dtype=torch.float64)
    fast = ref(action_text, species_text, species, graph)
    dense = dense_refine(ref, action_text, species_text, species, weights.double())
    assert torch.allclose(fast, dense, rtol=0, atol=1e-12)
    inputs = [action_text, species_text, *ref.parameters()]
    for g_fast, g_dense in zip(
        torch.autograd.grad((fast * probe).sum(), inputs), torch.autograd.grad((dense * probe).sum(), inputs)
    ):
        assert torch.allclose(g_fast, g_dense, rtol=0, atol=1e-12)


def test_normalized_refinement_starts_as_identity():
    head = make_head(ModelConfig(refine_graph="normalized", text_prompt=False))
    species = torch.eye(A)
    refined = head.refine(head.vocab.action_text, head.vocab.species_text, species, head.vocab.graph)
    assert torch.equal(refined, head.vocab.action_text.expand(A, -1, -1))


def test_graph_must_be_bipartite_and_edges_build_it():
    adj = torch.eye(A + C)
    adj[0, 1] = adj[1, 0] = 1
    with pytest.raises(AnimClipError, match="species–species"):
        BipartiteGraph(adj, A)
    edges = torch.tensor([[0, A], [A, 0]] + [[i, i] for i in range(A + C)])
    built = adjacency_from_edges(edges, A + C)
    assert built.sum() == A + C + 2 and built[0, A] == built[A, 0] == 1


# ---- the head -------------------------------------------------------------------------------


def test_head_shapes_and_normalisation():
    head = make_head(ModelConfig(video_specific_prompt=True))
    features, species = make_batch(3)
    out = head(features, species)
    text = out.text[out.index]
    assert out.logits.shape == (3, C) and out.video.shape == (3, D) and text.shape == (3, C, D)
    assert torch.allclose(out.video.norm(dim=-1), torch.ones(3))
    assert torch.allclose(out.logits, 100 * torch.einsum("bd,bcd->bc", out.video, text), atol=1e-4)


@pytest.mark.parametrize(
    "cfg",
    [ModelConfig(), ModelConfig(species_source="predicted", video_specific_prompt=True, refine_graph="normalized")],
    ids=["release", "predicted+vsp+normalized"],
)
def test_logits_follow_a_batch_permutation_and_ignore_other_clips(cfg: ModelConfig):
    head = make_head(cfg).eval()
    features, species = make_batch(5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        logits = head(features, species).logits
        assert torch.allclose(head(features[perm], species[perm]).logits, logits[perm], atol=1e-4)
        for i in range(5):
            assert torch.allclose(head(features[i : i + 1], species[i : i + 1]).logits, logits[i : i + 1], atol=1e-4)


def test_species_sources():
    features, species = make_batch(3)
    oracle = make_head()
    with torch.no_grad():
        none = dataclasses.replace(oracle.cfg, species_source="none")
        head_none = make_head(none)
        assert torch.allclose(head_none(features, None).logits, oracle(features, torch.zeros_like(species)).logits)
        head_pred = make_head(dataclasses.replace(oracle.cfg, species_source="predicted"))
        predicted = head_pred(features, None).logits
        assert torch.equal(head_pred(features, species).logits, predicted)  # the given vector is ignored
        s = head_pred.species_vector(features.cls, None, vocab=head_pred.vocab)
        video = F.normalize(features.cls.mean(1), dim=-1)
        expected = 100 * video @ F.normalize(head_pred.vocab.species_text, dim=-1).T
        assert torch.allclose(s, expected.softmax(-1))
        assert torch.allclose(predicted, oracle(features, s).logits, atol=1e-4)
        # species.model: a separate predictor's probabilities, given as they are
        head_given = make_head(dataclasses.replace(oracle.cfg, species_source="predicted"), inputs=HeadInputs("predictor"))
        probabilities = torch.rand(species.shape).softmax(-1)
        assert torch.allclose(head_given(features, probabilities).logits, oracle(features, probabilities).logits,
                              atol=1e-4)
    with pytest.raises(AnimClipError, match="species vector"):
        oracle(features, species[:, :-1])
    with pytest.raises(AnimClipError, match=r"species vector must be \(B=3, A=\d+\), got None"):
        head_given(features, None)


def test_everything_off_is_zero_shot_clip_on_the_frame_mean():
    cfg = ModelConfig(mit_layers=0, refine=False, text_prompt=False, video_prompt=False)
    head = make_head(cfg)
    features, species = make_batch(3)
    expected = 100 * F.normalize(features.cls.mean(1), dim=-1) @ F.normalize(head.vocab.action_text, dim=-1).T
    assert torch.allclose(head(features, species).logits, expected, atol=1e-4)
    assert sum(p.numel() for p in head.parameters()) == 0


def test_refinement_off_feeds_the_text_prompt_directly():
    head = make_head(ModelConfig(refine=False))
    features, species = make_batch(3)
    text = head.vocab.action_text.expand(3, -1, -1)
    expected = head.text_prompt(text, (species @ head.vocab.species_text)[:, None])
    assert torch.allclose(head.class_embeddings(species), F.normalize(expected, dim=-1))


def test_video_specific_prompt_needs_patches():
    with pytest.raises(AnimClipError, match="patch_width"):
        AnimalCLIPHead(ModelConfig(video_specific_prompt=True), inputs=HeadInputs("annotated", patches=True),
                       embed_dim=D, num_frames=T)
    head = make_head(ModelConfig(video_specific_prompt=True))
    features, species = make_batch(2)
    with pytest.raises(AnimClipError, match="patch tokens"):
        head(FrameFeatures(features.cls), species)
    patches_changed = FrameFeatures(features.cls, torch.randn_like(features.patches))
    assert not torch.allclose(head(patches_changed, species).logits, head(features, species).logits)


def test_class_embeddings_are_the_forward_text():
    head = make_head()
    features, species = make_batch(3)
    embeddings = head.class_embeddings(species)
    assert embeddings.shape == (3, C, D)
    out = head(features, species)
    assert torch.allclose(embeddings, out.text[out.index], atol=1e-6)
    one_per_species = head.class_embeddings(torch.eye(A))
    assert one_per_species.shape == (A, C, D) and torch.allclose(one_per_species.norm(dim=-1), torch.ones(A, C))


def test_vocabulary_is_required_and_replaceable():
    head = AnimalCLIPHead(ModelConfig(), inputs=HeadInputs("annotated"), embed_dim=D, num_frames=T)
    features, species = make_batch(2)
    with pytest.raises(AnimClipError, match="no vocabulary"):
        head(features, species)
    other = make_head()
    head.load_state_dict({k: v for k, v in other.state_dict().items() if not k.startswith("vocab.")})
    vocab = head.make_vocabulary(other.vocab.action_text, other.vocab.species_text, other.vocab.graph.adjacency)
    assert torch.allclose(head(features, species, vocab).logits, other(features, species).logits)


def test_loading_a_state_dict_rebuilds_the_graph_structures():
    head, other = make_head(seed=0), make_head(seed=5)
    features, species = make_batch(3)
    head.load_state_dict(other.state_dict())
    assert torch.equal(head.vocab.graph.edge_action, other.vocab.graph.edge_action)
    assert torch.equal(head(features, species).logits, other(features, species).logits)


def test_dead_parameters_receive_no_gradient_and_the_rest_do():
    head = make_head()
    features, species = make_batch(4)
    head(features, species).logits.logsumexp(-1).sum().backward()
    dead = {id(p) for m in head.modules() if hasattr(m, "dead_parameters") for p in m.dead_parameters()}
    for name, p in head.named_parameters():
        assert (p.grad is None) == (id(p) in dead), name
    rows = {r.module: r for r in parameter_summary(head)}
    per_layer = 2 * D * D + 2 * D  # q_proj, k_proj, norm1
    assert rows["text_prompt"].dead == rows["video_prompt"].dead == 3 * per_layer
    assert rows["total"].total == sum(p.numel() for p in head.parameters())


def test_head_runs_under_bf16_autocast():
    head = make_head()
    features, species = make_batch(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(FrameFeatures(features.cls.half()), species)
    out.logits.float().sum().backward()
    assert torch.isfinite(out.logits).all() and head.refine.layers[0].weight.grad is not None


# ---- the end-to-end model -------------------------------------------------------------------


def test_cross_frame_tower_and_end_to_end_model():
    model = AnimalCLIP(tiny_clip(), make_head(ModelConfig(video_specific_prompt=True)))
    video = torch.randn(2, T, 3, 24, 24)
    features = model.encode_frames(video)
    assert features.cls.shape == (2, T, D) and features.patches.shape == (2, T, 9, W)
    out = model(video, make_batch(2)[1])
    assert out.logits.shape == (2, C)
    with torch.no_grad():  # message tokens mix frames within a clip, never across clips
        alone = model.encode_frames(video[1:]).cls
        assert torch.allclose(alone, features.cls[1:], atol=1e-5)
        other_first_frame = video.clone()
        other_first_frame[:, 0] = torch.randn(2, 3, 24, 24)
        assert not torch.allclose(model.encode_frames(other_first_frame).cls[:, 1:], features.cls[:, 1:], atol=1e-3)
    model.train()
    assert not model.text.training and all(not p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad for p in model.visual.parameters())
    tokens = torch.randint(1, 99, (3, 16))
    assert model.encode_text(tokens).shape == (3, D)


def test_grad_checkpointing_gives_the_same_gradients():
    model = AnimalCLIP(tiny_clip(), make_head())
    video, species = torch.randn(2, T, 3, 24, 24), make_batch(2)[1]
    model(video, species).logits.sum().backward()
    plain = model.visual.conv1.weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing()
    model(video, species).logits.sum().backward()
    assert torch.allclose(model.visual.conv1.weight.grad, plain, atol=1e-6)


def test_vit_b16_parameter_counts_match_method_2_12():
    """docs/method.md §2.12 (random init, no forward)."""
    model = end_to_end(Config(), load_pretrained=False)
    rows = {r.module: r for r in parameter_summary(model)}
    millions = {name: round(r.total / 1e6, 2) for name, r in rows.items()}
    assert millions["visual"] == 86.19
    assert millions["visual.message_tokens"] == 35.45
    assert millions["head.mit"] == 3.16
    assert round((rows["head.text_prompt"].total + rows["head.video_prompt"].total) / 1e6, 2) == 18.91
    live = sum(rows[g].total - rows[g].dead for g in ("head.text_prompt", "head.video_prompt"))
    assert round(live / 1e6, 2) == 15.76
    assert millions["head.refine"] == 0.26
    assert millions["text"] == 63.43 and rows["text"].trainable == 0
    head_total = sum(rows[g].total for g in rows if g.startswith("head."))
    assert round(head_total / 1e6, 1) == 22.3


def test_training_gradients_are_the_same_bits_every_run_on_several_threads():
    """Soft species vectors (mixup) make the refinement gather rows many times; on a multi-core
    CPU indexing's backward adds them in parallel, in an order that changed between runs, so two
    identical trainings ended differently. The gathers are ``index_select`` now."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        features, _ = make_batch(64)
        species = torch.rand(64, A, generator=torch.Generator().manual_seed(2))  # soft, every entry present
        grads = []
        for _ in range(8):
            head = make_head()
            head(features, species).logits.logsumexp(-1).sum().backward()
            grads.append({n: p.grad for n, p in head.named_parameters() if p.grad is not None})
    finally:
        torch.set_num_threads(threads)
    for other in grads[1:]:
        assert all(torch.equal(other[n], grads[0][n]) for n in grads[0])
