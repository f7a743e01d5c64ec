"""The generic CSV dataset, the dataset model's tensors and the graph."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from anim_clip.config import DataConfig
from anim_clip.data.dataset import load_dataset
from anim_clip.data.graph import SpeciesActionGraph
from anim_clip.errors import ConfigError, DatasetFormatError


def _csv_dataset(tmp_path: Path, train: str, test: str, **files: str) -> DataConfig:
    (tmp_path / "train.csv").write_text(train)
    (tmp_path / "test.csv").write_text(test)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return DataConfig(name="mine", format="csv", annotations=str(tmp_path), root=str(tmp_path / "videos"))


def test_csv_dataset_multi_label_and_species(tmp_path):
    cfg = _csv_dataset(
        tmp_path,
        "path,actions,species\nclips/a.mp4,Walking;Eating,Fox\nclips/b.mp4,Flying,Crane;Fox\n",
        "path,actions,species\nclips/c.mp4,Walking,Crane\n",
    )
    ds = load_dataset(cfg)
    assert ds.actions == ["Eating", "Flying", "Walking"]  # sorted union when no label list is given
    assert ds.species == ["Crane", "Fox"]
    np.testing.assert_array_equal(ds.targets("train"), [[1, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(ds.species_vectors("train"), [[0, 1], [1, 1]])
    assert ds.video_path(ds.clips("test")[0]) == tmp_path / "videos" / "clips/c.mp4"
    graph = ds.graph("train")
    assert graph.pairs() == {(1, 0), (1, 2), (0, 1), (1, 1)}
    with pytest.raises(ConfigError, match="no relation file"):
        ds.graph("release")


def test_csv_dataset_label_lists_and_no_species(tmp_path):
    cfg = _csv_dataset(
        tmp_path,
        "path,actions\na.mp4,Run\nb.mp4,Rest\n",
        "path,actions\nc.mp4,Run\n",
        **{"labels.txt": "Run\nRest\nGroom\n"},
    )
    cfg.labels = "labels.txt"
    ds = load_dataset(cfg)
    assert ds.actions == ["Run", "Rest", "Groom"] and ds.species == []
    assert ds.targets("train").shape == (2, 3) and ds.species_vectors("train").shape == (2, 0)


@pytest.mark.parametrize(
    "train, message, line",
    [
        ("path,label\na.mp4,Run\n", "header must be", 1),
        ("path,actions\na.mp4,\n", "at least one action", 2),
        ("path,actions\na.mp4,Run,Fox,extra\n", "expected 2 fields", 2),
    ],
)
def test_csv_errors_name_the_line(tmp_path, train, message, line):
    cfg = _csv_dataset(tmp_path, train, "path,actions\nc.mp4,Run\n")
    with pytest.raises(DatasetFormatError, match=message) as err:
        load_dataset(cfg)
    assert err.value.line == line and "train.csv" in str(err.value)


def test_unknown_label_names_the_line(tmp_path):
    cfg = _csv_dataset(tmp_path, "path,actions\na.mp4,Run\n", "path,actions\nc.mp4,Fly\n", **{"labels.txt": "Run\n"})
    cfg.labels = "labels.txt"
    with pytest.raises(DatasetFormatError, match="'Fly' is not in the label list") as err:
        load_dataset(cfg)
    assert err.value.line == 2


def test_unknown_species_name_names_the_line(tmp_path):
    cfg = _csv_dataset(tmp_path, "path,actions,species\na.mp4,Run,Fox\nb.mp4,Run,Yeti\n",
                       "path,actions,species\nc.mp4,Run,Fox\n", **{"species.txt": "Fox\n"})
    cfg.species = "species.txt"
    with pytest.raises(DatasetFormatError, match="species 'Yeti' is not in the species list") as err:
        load_dataset(cfg)
    assert err.value.line == 3 and "train.csv" in str(err.value)


@pytest.mark.parametrize("line, message", [
    ("x.mp4 99 0", r"action id 99 out of range \(0\.\.\d+\)"),
    ("x.mp4 0 999", r"species id 999 out of range \(0\.\.\d+\)"),
])
def test_ids_out_of_range_name_the_line(tmp_path, line, message):
    release = Path(__file__).parents[1] / "anim_clip" / "data" / "release" / "MammalNet"
    shutil.copytree(release, tmp_path / "mn")
    train = tmp_path / "mn" / "train.txt"
    train.write_text(f"{train.read_text().splitlines()[0]}\n{line}\n")
    with pytest.raises(DatasetFormatError, match=message) as err:
        load_dataset(DataConfig(format="mammalnet", annotations=str(tmp_path / "mn")))
    assert err.value.line == 2 and "train.txt" in str(err.value)


def test_csv_needs_an_annotation_folder():
    with pytest.raises(ConfigError, match="data.annotations"):
        load_dataset(DataConfig(format="csv"))


def test_relation_must_follow_species_order(tmp_path):
    ak = Path(__file__).resolve().parents[1] / "anim_clip/data/release/AK"
    for name in ("label.csv", "animal_label.csv", "train_all.txt", "test_animal.txt"):
        (tmp_path / name).write_bytes((ak / name).read_bytes())
    lines = (ak / "animal-action-relation.txt").read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    (tmp_path / "animal-action-relation.txt").write_text("\n".join(lines))
    with pytest.raises(DatasetFormatError, match="where the species list has") as err:
        load_dataset(DataConfig(format="ak", annotations=str(tmp_path)))
    assert err.value.line == 1


def test_graph_adjacency_and_edges():
    graph = SpeciesActionGraph.from_lists([[1, 2], [0]], num_actions=3)
    adj = graph.adjacency()
    assert adj.shape == (5, 5) and (adj == adj.T).all() and (np.diag(adj) == 1).all()
    assert adj[0, 2 + 1] == 1 and adj[0, 2 + 0] == 0 and adj[1, 2 + 0] == 1
    assert adj.sum() == 5 + 2 * 3
    assert {tuple(e) for e in graph.edges()} == {tuple(i) for i in np.argwhere(adj)}
    np.testing.assert_array_equal(graph.can_perform(), [[0, 1, 1], [1, 0, 0]])


def test_unseen_species_are_dropped_from_training():
    ds = load_dataset(DataConfig(format="lote", unseen_species=["Sus Scrofa"]))
    sus = ds.species.index("Sus Scrofa")
    assert not any(sus in c.species for c in ds.clips("train"))
    assert any(sus in c.species for c in ds.clips("test"))
    with pytest.raises(ConfigError, match="not in the species list"):
        load_dataset(DataConfig(format="lote", unseen_species=["Unicorn"]))


def test_manifest_hash_changes_with_the_list():
    ds = load_dataset(DataConfig(format="lote"))
    before = ds.manifest_sha256("test")
    ds.splits["test"] = ds.splits["test"][1:]
    assert ds.manifest_sha256("test") != before


@pytest.mark.parametrize("clip", ["../elsewhere.mp4", "/data/other/a.mp4", "clips/../../a.mp4"])
def test_clips_outside_the_root_are_refused_unless_allowed(tmp_path, clip):
    cfg = _csv_dataset(tmp_path, f"path,actions\na.mp4,Run\n{clip},Rest\n", "path,actions\nc.mp4,Run\n")
    with pytest.raises(DatasetFormatError, match="outside data.root.*data.allow_outside_root=true") as err:
        load_dataset(cfg)
    assert err.value.line == 3 and "train.csv" in str(err.value)
    cfg.allow_outside_root = True
    ds = load_dataset(cfg)
    assert ds.video_path(ds.clips("train")[1]) == tmp_path / "videos" / clip


@pytest.mark.parametrize("clip", ["link.mp4", "linked/a.mp4"])
def test_symbolic_links_leading_outside_the_root_are_refused_unless_allowed(tmp_path, clip):
    videos, outside = tmp_path / "videos", tmp_path / "outside"
    outside.mkdir()
    (outside / "a.mp4").write_bytes(b"not anyone's to read")
    videos.mkdir()
    (videos / "link.mp4").symlink_to(outside / "a.mp4")
    (videos / "linked").symlink_to(outside)
    cfg = _csv_dataset(tmp_path, f"path,actions\nb.mp4,Run\n{clip},Rest\n", "path,actions\nc.mp4,Run\n")
    with pytest.raises(DatasetFormatError, match=f"symbolic link to {outside / 'a.mp4'}, outside data.root; "
                                                 "move it under data.root, or set data.allow_outside_root=true") as err:
        load_dataset(cfg)
    assert err.value.line == 3 and "train.csv" in str(err.value)
    cfg.allow_outside_root = True
    ds = load_dataset(cfg)
    assert ds.video_path(ds.clips("train")[1]).resolve() == outside / "a.mp4"


def test_symbolic_links_inside_the_root_and_a_linked_root_are_accepted(tmp_path):
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "sub" / "a.mp4").write_bytes(b"")
    (real / "alias.mp4").symlink_to(real / "sub" / "a.mp4")
    (tmp_path / "videos").symlink_to(real)  # data.root itself is a link
    cfg = _csv_dataset(tmp_path, "path,actions\nalias.mp4,Run\nsub/b.mp4,Rest\n", "path,actions\nc.mp4,Run\n")
    assert [c.path for c in load_dataset(cfg).clips("train")] == ["alias.mp4", "sub/b.mp4"]


@pytest.mark.parametrize(
    "train, test, where, agree",
    [
        ("path,actions\na.mp4,Run\nb.mp4,Rest\n./a.mp4,Rest\n", "path,actions\nc.mp4,Run\n", "train.csv:4", "other"),
        ("path,actions\na.mp4,Run;Rest\na.mp4,Rest;Run\n", "path,actions\nc.mp4,Run\n", "train.csv:3", "the same"),
        ("path,actions\na.mp4,Run\n", "path,actions\nc.mp4,Run\na.mp4,Run\n", "test.csv:3", "the same"),
    ],
    ids=["conflicting", "identical", "train-and-test"],
)
def test_a_clip_listed_twice_names_both_lines(tmp_path, train, test, where, agree):
    """Conflicting labels, identical duplicates and a test clip also in train are all refused."""
    cfg = _csv_dataset(tmp_path, train, test)
    with pytest.raises(DatasetFormatError, match=f"listed again, with {agree} labels") as err:
        load_dataset(cfg)
    assert str(err.value).startswith(f"{tmp_path / where}:") and f"first at {tmp_path / 'train.csv'}:2" in str(err.value)
