"""The release's list files, read as shipped, and every malformed-line case."""

from __future__ import annotations

from pathlib import Path

import pytest

from anim_clip.config import DataConfig
from anim_clip.data.dataset import RELEASE_DIR, load_dataset
from anim_clip.data.formats import read_ak_split, read_class_list, read_id_split, read_relation
from anim_clip.errors import DatasetFormatError


@pytest.mark.parametrize(
    "fmt, actions, species, train, test",
    [("ak", 140, 897, 24003, 6096), ("mammalnet", 12, 173, 14553, 3840), ("lote", 21, 11, 6994, 2997)],
)
def test_release_counts(fmt, actions, species, train, test):
    ds = load_dataset(DataConfig(format=fmt))
    assert (ds.num_actions, ds.num_species) == (actions, species)
    assert (len(ds.clips("train")), len(ds.clips("test"))) == (train, test)


@pytest.mark.extra_data
def test_shipped_files_equal_the_release(release_dir: Path):
    for shipped in RELEASE_DIR.rglob("*"):
        if shipped.is_file():
            original = release_dir / shipped.relative_to(RELEASE_DIR)
            assert shipped.read_bytes() == original.read_bytes(), shipped


def test_ak_traps():
    ds = load_dataset(DataConfig(format="ak"))
    # label order is AK's own, not alphabetical; species names keep their apostrophes
    assert ds.actions[70:72] == ["Lying Down", "Laying Eggs"]
    assert "Russell's Viper" in ds.species
    viper = ds.species.index("Russell's Viper")
    assert any(viper in c.species for c in ds.clips("train"))
    # the release's pair with a missing opening quote: ('Fish', 'Immobilized'), (Portugese Man O'War', ...)
    clip = next(c for c in ds.clips("train") if c.path == "BEGOPIKV.mp4")
    assert {ds.species[s] for s in clip.species} == {"Fish", "Portugese Man O'War"}
    assert {ds.actions[a] for a in clip.actions} == {"Immobilized", "Keeping still"}
    # docs/method.md §4.1-4.2 statistics
    assert ds.targets("train").sum(1).mean() == pytest.approx(2.09, abs=0.01)
    assert ds.targets("test").sum(1).mean() == pytest.approx(2.05, abs=0.01)
    assert sorted(int(i) for i in (ds.targets("test").sum(0) == 0).nonzero()[0]) == [
        4, 24, 34, 36, 53, 63, 74, 77, 86, 89, 111, 113, 126]
    counts = ds.species_vectors("train").sum(1)
    assert [int((counts == k).sum()) for k in (1, 2, 3, 4)] == [20574, 3198, 221, 10]


def test_mammalnet_bom_crlf_and_genus_ids():
    ds = load_dataset(DataConfig(format="mammalnet"))
    assert ds.actions[0] == "drinks water" and ds.species[0] == "panthera"  # BOM stripped, CR stripped
    first = ds.clips("train")[0]
    assert first.path == "Di4eEBZjkA4.mp4" and first.actions == (1,) and first.species == (1,)


def test_lote_paths_keep_their_folder():
    ds = load_dataset(DataConfig(format="lote", root="/videos"))
    first = ds.clips("test")[0]
    assert first.path == "Parental/MacacaThibetana3734.avi"
    assert ds.video_path(first) == Path("/videos/Parental/MacacaThibetana3734.avi")
    assert ds.actions[17] == "Amusing"
    assert ds.targets("train")[:, 17].sum() == 1 and ds.targets("test")[:, 17].sum() == 0


def test_graphs_release_vs_rebuilt():
    """docs/method.md §4.2 / D6: AK's release graph uses test pairs; MammalNet's and LoTE's are train-only."""
    ak = load_dataset(DataConfig(format="ak"))
    assert len(ak.release_graph.pairs()) == 4860
    same_train = sum(a == b for a, b in zip(ak.release_graph.species_actions, ak.train_graph().species_actions))
    same_all = sum(
        a == b for a, b in zip(ak.release_graph.species_actions, ak.train_graph(("train", "test")).species_actions)
    )
    assert (same_train, same_all) == (650, 895)
    for fmt in ("mammalnet", "lote"):
        ds = load_dataset(DataConfig(format=fmt))
        assert ds.release_graph == ds.train_graph()


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "reader, text, line, message",
    [
        (read_class_list, "id,name\n0,a\nx,b\n", 3, "not an integer"),
        (read_class_list, "id,name\n0,a\n0,b\n", 3, "appears twice"),
        (read_class_list, "id,name\n0,a\n2,b\n", None, r"missing \[1\]"),
        (read_class_list, "id,name\n0\n", 2, "expected 'id,name'"),
        (read_relation, "Frog\t[1, 2]\t3\n", 1, "does not match"),
        (read_relation, "Frog\t[1, x]\t2\n", 1, "not a list of integers"),
        (read_relation, "Frog [1]\n", 1, "expected"),
        (read_ak_split, "A.mp4\t[('Frog', 'Jumping')]\nB.mp4\t('Frog', 'Jumping')\n", 2, "list of"),
        (read_ak_split, "A.mp4 [('Frog', 'Jumping')]\n", 1, "expected"),
        (read_ak_split, "A.mp4\t[('Frog' 'Jumping')]\n", 1, "cannot read pair"),
        (read_id_split, "a.mp4 1 2\nb.mp4 one 2\n", 2, "expected"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, reader, text, line, message):
    path = _write(tmp_path, "list.txt", text)
    with pytest.raises(DatasetFormatError, match=message) as err:
        reader(path)
    assert err.value.line == line
    assert str(path) in str(err.value)


def test_a_byte_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "label.csv"
    path.write_bytes("\ufeffid,name\r\n0,Run\r\n1,Caf\u00e9\r\n".encode("utf-8") + b"2,Ren\xe9\r\n")
    with pytest.raises(DatasetFormatError, match="not UTF-8 text: byte 0xe9 at byte 6 of the line") as err:
        read_class_list(path)
    assert err.value.line == 4 and str(err.value).startswith(f"{path}:4:")


def test_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(DatasetFormatError, match="file not found"):
        read_class_list(tmp_path / "nope.csv")
