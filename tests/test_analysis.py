"""``anim_clip.analysis``: the faiss prompt space of a run trained on the demo data, checked against
brute-force numpy and against the head's own output; every query and command on that run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from typer.testing import CliRunner

from anim_clip.analysis.clips import (
    clip_from_cache,
    clip_report,
    confusion_matrix,
    confusion_report,
)
from anim_clip.cli.analyze import analyze_app
from anim_clip.analysis.index import PromptIndex, device_note, search_device
from anim_clip.analysis.plots import prompt_map
from anim_clip.analysis.queries import confusable, neighbors, spread
from anim_clip.analysis.space import build_space
from anim_clip.analysis.store import (
    StaleSpaceError,
    build_and_save,
    load_space,
    open_space,
    space_dir,
)
from anim_clip.cache.extract import extract
from anim_clip.demo import demo_config
from anim_clip.data.dataset import load_dataset
from anim_clip.data.demo import make_demo_data
from anim_clip.errors import AnimClipError
from anim_clip.evaluate.cached import cached_scores
from anim_clip.models.checkpoint import load_checkpoint, save_checkpoint
from anim_clip.models.factory import model_from_checkpoint
from anim_clip.cache.reader import open_cached_data
from anim_clip.runtime.distributed import Distributed
from anim_clip.train.engine import train
from anim_clip.models.inputs import HeadInputs

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A run trained for two epochs on a tiny demo cache."""
    root = tmp_path_factory.mktemp("analysis")
    make_demo_data(root / "data", train_clips=16, test_clips=8, num_frames=16, size=64)
    cfg = demo_config(root / "data", ["backbone.pretrained=null", "sampling.num_frames=4", "sampling.train_views=2",
                                      "runtime.precision=fp32",  # compared with fp32 computations
                                      "train.epochs=2", "train.batch_size=8", "train.accumulation=1"])
    extract(cfg, root / "cache", progress=False, device=CPU)
    train(cfg, cache=root / "cache", out=root / "run", progress=False)
    return {"root": root, "cfg": cfg, "cache": root / "cache", "run": root / "run",
            "checkpoint": root / "run" / "last.pt"}


@pytest.fixture(scope="module")
def stored(trained):
    return build_and_save(trained["checkpoint"], num_gpus=0, device=CPU)


@pytest.fixture(scope="module")
def head(trained):
    return model_from_checkpoint(load_checkpoint(trained["checkpoint"]), "cached").eval()


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, 1), ids


def unit(rows: int, dim: int, seed: int, clusters: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    if clusters:  # prompt spaces are clustered (one action across species): so is this
        x = rng.standard_normal((clusters, dim)).astype(np.float32)[rng.integers(clusters, size=rows)] + 0.3 * x
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# index


def test_device_selection_follows_the_gpu_count():
    assert search_device("flat", 0) == "cpu" and search_device("ivf", 0) == "cpu"
    assert search_device("flat", 1) == "gpu" and search_device("ivf", 4) == "gpu"
    assert search_device("hnsw", 2) == "cpu"  # faiss has no GPU HNSW
    assert "CPU (faiss sees no GPU)" in device_note("flat", 0)
    assert "on the GPU (2 GPUs" in device_note("ivf", 2)
    assert "no GPU HNSW" in device_note("hnsw", 1)


@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="faiss sees no GPU")
def test_gpu_index_gives_the_cpu_answers():
    x, q = unit(5000, 64, 0), unit(50, 64, 1)
    gpu = PromptIndex.build(x, "flat")
    assert gpu.device == "gpu"
    scores, ids = gpu.search(q, 10)
    ref_scores, ref_ids = brute_force(x, q, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)


def test_flat_index_equals_numpy_brute_force(stored):
    x, q = unit(3000, 64, 0), unit(40, 64, 1)
    index = PromptIndex.build(x, "flat", num_gpus=0, quiet=True)
    scores, ids = index.search(q, 10)
    ref_scores, ref_ids = brute_force(x, q, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    # the demo run's prompt space, every row as a query (prompts are close: compare scores, ids off ties)
    vectors = stored.space.vectors
    scores, ids = stored.index.search(vectors, 5)
    ref_scores, ref_ids = brute_force(vectors, vectors, 5)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    gaps = np.abs(np.diff(ref_scores, axis=1)).min(1) > 1e-5
    np.testing.assert_array_equal(ids[gaps], ref_ids[gaps])


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_have_high_recall(kind):
    both = unit(6100, 32, 2, clusters=60)
    x, q = both[:6000], both[6000:]
    index = PromptIndex.build(x, kind, num_gpus=0, quiet=True)
    assert index.kind == kind
    _, ids = index.search(q, 10)
    _, ref = brute_force(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref)])
    assert recall >= 0.95
    np.testing.assert_array_equal(index.vectors(), x)  # the vectors read back exactly


# ----------------------------------------------------------------------------------------------
# the space


def test_rows_are_the_heads_class_embeddings(stored, head):
    space = stored.space
    A = len(space.species)
    assert space.conditions == [(), *((s,) for s in range(A))]
    assert space.rows == (A + 1) * len(space.actions)
    with torch.inference_mode():
        for s in (0, 3, A - 1):
            one_hot = F.one_hot(torch.tensor([s]), A).float()
            expected = head.class_embeddings(one_hot)[0].numpy()
            np.testing.assert_allclose(space.block(space.condition_of([s])), expected, atol=1e-6)
        # unconditioned = the head's embeddings for an all-zero species vector (no animal token, no species node)
        zeros = torch.zeros(1, A)
        np.testing.assert_allclose(space.block(0), head.class_embeddings(zeros)[0].numpy(), atol=1e-6)
        np.testing.assert_allclose(space.block(0), F.normalize(head.conditioned_text(zeros, head.vocab), dim=-1)[0],
                                   atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(space.vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(stored.index.vectors(), space.vectors)
    condition, action = space.id_map()
    assert (condition[space.row(3, 2)], action[space.row(3, 2)]) == (3, 2)
    assert space.species_column()[space.row(0, 1)] == -1 and space.species_column()[space.row(3, 1)] == 2


def test_species_sets_and_batches(head, stored):
    names = stored.space
    space = build_space(head, names.actions, names.species, [(3, 1), (0, 2, 5), (1, 3)], batch=3)
    assert space.conditions[-2:] == [(0, 2, 5), (1, 3)]
    np.testing.assert_allclose(space.vectors[: stored.space.rows], stored.space.vectors, atol=1e-6)
    multi_hot = torch.zeros(1, len(names.species))
    multi_hot[0, [1, 3]] = 1
    with torch.inference_mode():
        expected = head.class_embeddings(multi_hot)[0].numpy()
    np.testing.assert_allclose(space.block(space.condition_of([3, 1])), expected, atol=1e-6)
    assert space.label(space.condition_of([1, 3])) == f"{names.species[1]} + {names.species[3]}"


def test_the_id_map_and_can_perform_are_saved(stored, trained):
    with np.load(stored.directory / stored.meta["files"]["ids"]) as ids:
        np.testing.assert_array_equal(ids["condition"], stored.space.id_map()[0])
        np.testing.assert_array_equal(ids["species"], stored.space.species_column())
        graph = load_dataset(trained["cfg"].data).graph(trained["cfg"].data.graph)
        np.testing.assert_array_equal(ids["can_perform"], graph.can_perform())
    assert stored.directory == space_dir(trained["checkpoint"]) == trained["run"] / "last.prompt-space"


def test_persisted_space_reloads_with_the_same_answers(stored, trained):
    again = open_space(trained["run"], num_gpus=0)
    assert again.meta["build"] == stored.meta["build"]  # loaded, not rebuilt
    np.testing.assert_array_equal(again.space.vectors, stored.space.vectors)
    q = stored.space.vectors[::5]
    for a, b in zip(again.index.search(q, 6), stored.index.search(q, 6)):
        np.testing.assert_array_equal(a, b)


def test_a_stale_space_is_refused_then_rebuilt(trained, tmp_path):
    checkpoint = tmp_path / "last.pt"
    shutil.copy(trained["checkpoint"], checkpoint)
    first = build_and_save(checkpoint, "hnsw", num_gpus=0, device=CPU)
    os.utime(checkpoint, ns=(1, 1))  # touched, same bytes: still current
    assert load_space(first.directory, checkpoint, 0).meta["build"] == first.meta["build"]
    ckpt = load_checkpoint(checkpoint)
    head = model_from_checkpoint(ckpt, "cached")
    with torch.no_grad():
        head.text_prompt.alpha.mul_(3.0)
    save_checkpoint(checkpoint, head, ckpt.config, vocab=ckpt.vocab)
    with pytest.raises(StaleSpaceError, match="rebuild it"):
        load_space(first.directory, checkpoint, 0)
    rebuilt = open_space(checkpoint, num_gpus=0)
    assert rebuilt.meta["build"] != first.meta["build"] and rebuilt.index.kind == "hnsw"  # the options it had
    assert not np.allclose(rebuilt.space.vectors, first.space.vectors)
    assert sorted(p.name for p in first.directory.iterdir()) == sorted(
        ["space.json", rebuilt.meta["files"]["index"], rebuilt.meta["files"]["ids"]])


def test_an_end_to_end_checkpoint_has_its_heads_space(trained, stored, tmp_path):
    ckpt = load_checkpoint(trained["checkpoint"])
    model = model_from_checkpoint(ckpt, "e2e", load_pretrained=False)
    save_checkpoint(tmp_path / "e2e.pt", model, ckpt.config, vocab=ckpt.vocab)
    e2e = build_and_save(tmp_path / "e2e.pt", num_gpus=0, device=CPU)
    assert e2e.meta["checkpoint"]["kind"] == "e2e"
    np.testing.assert_allclose(e2e.space.vectors, stored.space.vectors, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# queries


def test_neighbors(stored):
    space = stored.space
    report = neighbors(stored, "running", "Fox", k=4)
    condition = space.condition_of([space.species.index("Fox")])
    a = space.actions.index("Running")
    query = space.vectors[space.row(condition, a)]
    within = report["within_species"]
    assert len(within) == 4 and "Running" not in [r["action"] for r in within]
    for r in within:
        assert r["cosine"] == pytest.approx(float(space.block(condition)[space.actions.index(r["action"])] @ query), abs=1e-6)
    assert [r["cosine"] for r in within] == sorted((r["cosine"] for r in within), reverse=True)
    scores, ids = brute_force(space.vectors, query[None], 5)
    expected = [i for i in ids[0] if i != space.row(condition, a)][:4]
    np.testing.assert_allclose([r["cosine"] for r in report["anywhere"]],
                               [s for i, s in zip(ids[0], scores[0]) if i != space.row(condition, a)][:4], atol=1e-5)
    assert len(report["anywhere"]) == len(expected)
    unconditioned = neighbors(stored, "Walking", k=2)
    assert unconditioned["query"]["species"] == "(no species)"
    with pytest.raises(AnimClipError, match="close matches: Walking"):
        neighbors(stored, "Walkng")


def test_confusable_pairs_are_dot_products(stored):
    space = stored.space
    report = confusable(space, top=3)
    assert set(report["per_species"]) == {space.label(k) for k in range(len(space.conditions))}
    for k in range(len(space.conditions)):
        pairs = report["per_species"][space.label(k)]
        block = space.block(k)
        gram = block @ block.T
        best = np.sort(gram[np.triu_indices(len(block), 1)])[::-1][:3]
        np.testing.assert_allclose([p["cosine"] for p in pairs], best, atol=1e-6)
        for p in pairs:
            a, b = (space.actions.index(n) for n in p["actions"])
            assert a < b and p["cosine"] == pytest.approx(float(block[a] @ block[b]), abs=1e-6)
    singles = space.blocks()[1:]
    mean = np.einsum("scd,sed->ce", singles, singles) / len(singles)
    for p in report["overall"]:
        a, b = (space.actions.index(n) for n in p["actions"])
        assert p["mean_cosine"] == pytest.approx(float(mean[a, b]), abs=1e-5)
        assert p["max_cosine"] >= p["mean_cosine"]
    fox = confusable(space, "Common Crane", top=10, performable=True)
    crane = space.species.index("Common Crane")
    assert list(fox["per_species"]) == ["Common Crane"] and fox["overall"] == []
    for p in fox["per_species"]["Common Crane"]:
        assert all(space.can_perform[crane, space.actions.index(n)] for n in p["actions"])
    n = int(space.can_perform[crane].sum())
    assert len(fox["per_species"]["Common Crane"]) == min(10, n * (n - 1) // 2)


def test_spread(stored):
    space = stored.space
    report = spread(space)
    assert len(report["actions"]) == len(space.actions)
    values = [r["mean_pairwise_cosine"] for r in report["actions"]]
    assert values == sorted(values)
    a = space.actions.index("Walking")
    prompts = space.blocks()[1:, a].astype(np.float64)
    gram = prompts @ prompts.T
    detail = spread(space, "walking")
    A = len(prompts)
    assert detail["summary"]["mean_pairwise_cosine"] == pytest.approx((gram.sum() - np.trace(gram)) / (A * (A - 1)))
    np.fill_diagonal(gram, np.inf)
    assert detail["farthest_pair"]["cosine"] == pytest.approx(gram.min())
    assert len(detail["species"]) == A
    assert [r["performs"] for r in detail["species"]] == [bool(space.can_perform[space.species.index(r["species"]), a])
                                                          for r in detail["species"]]


def test_clip_query_flags_actions_the_species_cannot_perform(stored, head, trained):
    cfg = trained["cfg"]
    clip = clip_from_cache(trained["cache"], "test00002.mp4", cfg, head.inputs)
    report = clip_report(stored, head, clip, trained["cfg"], k=7)
    can_perform = load_dataset(cfg.data).graph(cfg.data.graph).can_perform()
    species = np.flatnonzero(clip.species.numpy())
    assert report["species"] == [stored.space.species[s] for s in species]
    performable = can_perform[species].any(0)
    for r in report["by_logit"] + report["by_prompt"]:
        assert r["performable"] == bool(performable[stored.space.actions.index(r["action"])])
    for r in report["anywhere"]:  # a prompt elsewhere in the space: performable by that prompt's own species
        row_species = list(stored.space.conditions[r["row"] // stored.space.num_actions])
        expected = can_perform[row_species].any(0) if row_species else np.ones(len(stored.space.actions), dtype=bool)
        assert r["performable"] == bool(expected[stored.space.actions.index(r["action"])]), r
    with torch.inference_mode():
        out = head(clip.features, clip.species[None].expand(clip.features.cls.shape[0], -1))
    logits = out.logits.mean(0).numpy()
    assert [r["action"] for r in report["by_logit"]] == [stored.space.actions[c] for c in np.argsort(-logits)]
    # without the video-specific prompt, the logits are logit_scale × the cosines to the species' prompts
    for r in report["by_logit"]:
        assert r["logit"] == pytest.approx(cfg.model.logit_scale * r["cosine"], abs=1e-4)
    top = stored.space.actions.index(report["prediction"]["action"])
    assert report["prediction"]["performable"] == bool(performable[top])
    assert any("cannot perform it" in f for f in report["flags"]) == (not performable[top])
    assert [t["action"] for t in report["true_actions"]] == [stored.space.actions[c] for c in np.flatnonzero(clip.targets)]
    with pytest.raises(AnimClipError, match="no clip 'missing.mp4'"):
        clip_from_cache(trained["cache"], "missing.mp4", cfg, head.inputs)


def test_confusions_follow_the_spearman_definition(stored, head, trained):
    cfg = trained["cfg"]
    _, data = open_cached_data(cfg, trained["cache"], load_dataset(cfg.data), CPU, HeadInputs.of_config(cfg))
    result = confusion_report(stored, head, data["test"], cfg, k=2, top=5)
    report = result.report
    expected = spearmanr(result.confusions, result.similarity).statistic
    assert report["spearman"]["rho"] == pytest.approx(expected)
    scores = cached_scores(head, data["test"], cfg, Distributed(0, 1, CPU))
    targets = data["test"].targets().numpy()
    matrix = confusion_matrix(scores, targets)
    wrong = (targets[np.arange(len(scores)), scores.argmax(1)] == 0).sum()
    assert report["errors"] == wrong and matrix.sum() == pytest.approx(wrong)
    a, b = result.pairs.T
    np.testing.assert_allclose(result.confusions, matrix[a, b] + matrix[b, a])
    # every test clip has one species: the similarity is the mean over clips of that species' prompt cosines
    species = data["test"].species().numpy().argmax(1)
    grams = np.stack([stored.space.block(s + 1) @ stored.space.block(s + 1).T for s in species])
    np.testing.assert_allclose(result.similarity, grams.mean(0)[a, b], atol=1e-5)
    assert len(report["top_pairs"]) <= 5 and 0 <= report["neighbour_hits"]["rate"] <= 1
    counts = [p["confusions"] for p in report["top_pairs"]]
    assert counts == sorted(counts, reverse=True)


def test_map(stored, tmp_path):
    report = prompt_map(stored.space, tmp_path / "map.png", clusters=4, species="Fox", action="Running")
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(report["cluster_sizes"]) == stored.space.rows and report["clusters"] == 4
    assert 0 < report["action_purity"] <= 1 and 0 < report["species_purity"] <= 1
    assert 0 < sum(report["explained_variance"]) <= 1


# ----------------------------------------------------------------------------------------------
# commands


def test_every_command_prints_and_writes_json(trained, tmp_path):
    shutil.copytree(trained["run"], tmp_path / "run")
    run, cache = str(tmp_path / "run"), str(trained["cache"])
    runner = CliRunner()
    commands = {
        "build": ["build", run, "--index", "ivf", "--cache", cache],
        "neighbors": ["neighbors", run, "Running", "--species", "Fox", "-k", "3"],
        "confusable": ["confusable", run, "--top", "2", "--performable"],
        "spread": ["spread", run, "Walking"],
        "clip": ["clip", run, "--clip", "test00001.mp4", "--cache", cache, "-k", "3"],
        "confusions": ["confusions", run, "--cache", cache, "-k", "2"],
        "map": ["map", run, "--species", "Duck", "--out", str(tmp_path / "map.png")],
    }
    for name, args in commands.items():
        json_args = [] if name == "build" else ["--json", str(tmp_path / f"{name}.json")]
        result = runner.invoke(analyze_app, args + json_args)
        assert result.exit_code == 0, (name, result.output, result.exception)
        if name != "build":
            written = json.loads((tmp_path / f"{name}.json").read_text())
            assert written["command"] == name and written["checkpoint"].endswith("last.pt")
    assert "ivf index on the CPU" in runner.invoke(analyze_app, commands["neighbors"]).output
    assert (tmp_path / "map.png").is_file()
    result = runner.invoke(analyze_app, ["clip", run, "--clip", "x.mp4"])
    assert isinstance(result.exception, AnimClipError) and "needs --cache" in str(result.exception)
    result = runner.invoke(analyze_app, ["build", run, "--index", "lsh"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "'lsh' is not one of 'flat', 'ivf', 'hnsw'" in result.output


def test_faiss_training_survives_video_decoding_loaded_first():
    """decord2 loads libnvblas globally on import; faiss imported after it crashed in k-means.
    A fresh process is needed: inside this one faiss is already loaded."""
    script = (
        "import anim_clip.data.video, numpy as np\n"
        "from anim_clip.analysis.index import PromptIndex\n"
        "x = np.random.default_rng(0).standard_normal((6000, 32)).astype('float32')\n"
        "PromptIndex.build(x, 'ivf', num_gpus=0, quiet=True)\n"
        "print('trained')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained" in done.stdout


def test_clip_from_a_video_scores_like_the_same_clip_from_the_cache(stored, head, trained, tmp_path):
    """``analyze clip --video`` decodes, renders and encodes the clip itself (the predict path):
    with the clip's annotated species it must score as the cached clip, up to the cache's fp16."""
    cached = clip_from_cache(trained["cache"], "test00001.mp4", trained["cfg"], head.inputs)
    from_cache = clip_report(stored, head, cached, trained["cfg"], k=7)
    species = [a for s in np.flatnonzero(cached.species.numpy()) for a in ("--species", stored.space.species[s])]
    video = trained["root"] / "data" / "videos" / "test00001.mp4"
    out = tmp_path / "clip.json"
    result = CliRunner().invoke(analyze_app, ["clip", str(trained["run"]), "--video", str(video), *species, "-k", "7",
                                              "--device", "cpu", "--json", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    from_video = json.loads(out.read_text())
    assert from_video["species"] == from_cache["species"]
    video_logits = {r["action"]: r["logit"] for r in from_video["by_logit"]}
    for r in from_cache["by_logit"]:
        assert video_logits[r["action"]] == pytest.approx(r["logit"], abs=0.01)
