"""Description files (the release's and ours) and the strings the text tower encodes."""

from __future__ import annotations

import numpy as np
import pytest

from anim_clip.config import DataConfig
from anim_clip.data.dataset import load_dataset
from anim_clip.data.descriptions import CLIP_TEXT, CONTEXT_LENGTH, class_texts, load_descriptions, split_sentences, token_count
from anim_clip.errors import DatasetFormatError


@pytest.mark.extra_data
def test_release_description_csv(release_dir):
    """No header, one long text per class: all 140 rows are read (the release's own loader loses one)."""
    actions = load_dataset(DataConfig(format="ak")).actions
    desc = load_descriptions(release_dir / "AK" / "description_ak.csv", actions)
    assert len(desc) == 140 and all(len(d) == 1 for d in desc)
    assert desc[0][0].startswith("Abseiling, also known as rappelling")
    assert token_count(desc[0][0]) > CONTEXT_LENGTH  # why sentence splitting exists
    texts = class_texts(actions, desc, split=CLIP_TEXT)
    assert all(token_count(s) <= CONTEXT_LENGTH for s in texts.strings)
    assert set(texts.owner.tolist()) == set(range(140)) and len(texts.strings) > 140
    # splitting loses no words
    first = [s for s, o in zip(texts.strings, texts.owner) if o == 0]
    assert " ".join(first).split() == desc[0][0].split()


def test_our_format_k_per_class(tmp_path):
    path = tmp_path / "actions.csv"
    path.write_text('id,name,description\n0,Run,"legs moving fast, body low"\n0,Run,a blur of legs\n1,Rest,lies still\n')
    desc = load_descriptions(path, ["Run", "Rest"])
    assert desc == [["legs moving fast, body low", "a blur of legs"], ["lies still"]]
    texts = class_texts(["Run", "Rest"], desc)
    assert texts.strings == ["legs moving fast, body low", "a blur of legs", "lies still"]
    np.testing.assert_array_equal(texts.owner, [0, 0, 1])


def test_names_without_descriptions():
    texts = class_texts(["Walking", "Keeping still"])
    assert texts.strings == ["Walking", "Keeping still"]  # raw names, no template (docs/method.md §2.4)
    np.testing.assert_array_equal(texts.owner, [0, 1])


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,name,description\n0,Walk,x\n", "is 'Run' in the label list, not 'Walk'"),
        ("id,name,description\n5,Run,x\n", "class id '5'"),
        ("id,name,description\n0,Run,x\n", "no description for 1 classes, e.g. 'Rest'"),
        ("Run,x\nRest,y\nFly,z\n", "'Fly' is not a class"),
        ("", "empty description file"),
    ],
)
def test_description_errors(tmp_path, text, message):
    path = tmp_path / "d.csv"
    path.write_text(text)
    with pytest.raises(DatasetFormatError, match=message):
        load_descriptions(path, ["Run", "Rest"])


def test_split_sentences_cuts_overlong_sentences():
    sentence = " ".join(["word"] * 200) + "."
    pieces = split_sentences(sentence)
    assert len(pieces) >= 3 and all(token_count(p) <= CONTEXT_LENGTH for p in pieces)
    assert " ".join(pieces).split() == sentence.split()
