"""Class descriptions and the exact strings the frozen text tower encodes (docs/method.md §2.4, D3).

Two file formats are read:
- the release's CSV (``description_ak.csv``): no header, one row ``name,long text`` per class;
- ours (written by ``anim-clip describe``): header ``id,name,description``, K rows per class.

The release encodes raw strings (no template) truncated at CLIP's 77-token context, so only the
first ~55 words of its long texts survive. ``split_sentences`` instead packs whole sentences into
pieces that fit the text tower's context (:class:`TextFit`: CLIP's 77 tokens, or the backbone's
own), turning one long text into several descriptions at no cost.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from anim_clip.data.formats import read_lines
from anim_clip.errors import DatasetFormatError

CONTEXT_LENGTH = 77  # CLIP's text context, start and end tokens included


@dataclass(frozen=True)
class TextFit:
    """A text tower's context: how many tokens it reads, and how many a string takes (start and end
    tokens included). The backbone's own comes from ``anim_clip.models.backbone.text_fit``."""

    context_length: int
    count: Callable[[str], int]


@dataclass(frozen=True)
class TextSet:
    """Strings to encode and, for each, the class it belongs to (K strings per class allowed)."""

    strings: list[str]
    owner: np.ndarray  # (S,) int64 class index of every string


def _rows(path: Path) -> list[list[str]]:
    return [row for row in csv.reader(io.StringIO("\n".join(read_lines(path)))) if any(c.strip() for c in row)]


def load_descriptions(path: str | Path, class_names: list[str]) -> list[list[str]]:
    """Descriptions per class, in ``class_names`` order. Every class needs at least one."""
    path = Path(path)
    rows = _rows(path)
    if not rows:
        raise DatasetFormatError(path, "empty description file")
    by_name: dict[str, list[str]] = {}
    header = [c.strip().lower() for c in rows[0]]
    if header == ["id", "name", "description"]:
        for number, row in enumerate(rows[1:], start=2):
            if len(row) != 3:
                raise DatasetFormatError(path, f"expected 'id,name,description', got {len(row)} fields", number)
            index, name, text = row
            if not index.strip().isdigit() or int(index) >= len(class_names):
                raise DatasetFormatError(path, f"class id {index!r} is not in 0..{len(class_names) - 1}", number)
            if class_names[int(index)] != name.strip():
                raise DatasetFormatError(
                    path, f"class {index} is {class_names[int(index)]!r} in the label list, not {name.strip()!r}", number
                )
            by_name.setdefault(name.strip(), []).append(text.strip())
    else:  # the release's headerless name,text rows
        for number, row in enumerate(rows, start=1):
            if len(row) < 2:
                raise DatasetFormatError(path, "expected 'name,description' (release format) or an id,name,description header", number)
            by_name.setdefault(row[0].strip(), []).append(",".join(row[1:]).strip())
    missing = [n for n in class_names if n not in by_name]
    if missing:
        raise DatasetFormatError(path, f"no description for {len(missing)} classes, e.g. {missing[0]!r}")
    unknown = [n for n in by_name if n not in set(class_names)]
    if unknown:
        raise DatasetFormatError(path, f"{unknown[0]!r} is not a class of this dataset")
    return [by_name[n] for n in class_names]


@lru_cache(maxsize=1)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def token_count(text: str) -> int:
    """BPE tokens of ``text`` under CLIP's tokenizer, start and end tokens included."""
    return len(_tokenizer().encode(text)) + 2


CLIP_TEXT = TextFit(CONTEXT_LENGTH, token_count)


def split_sentences(text: str, fit: TextFit = CLIP_TEXT) -> list[str]:
    """Pack whole sentences greedily into pieces that each fit the text context.

    A single sentence longer than the context is cut at word boundaries.
    """
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]
    pieces: list[str] = []
    current = ""
    for sentence in sentences:
        for part in _fit_words(sentence, fit):
            candidate = f"{current} {part}".strip()
            if current and fit.count(candidate) > fit.context_length:
                pieces.append(current)
                candidate = part
            current = candidate
    if current:
        pieces.append(current)
    return pieces


def _fit_words(sentence: str, fit: TextFit) -> list[str]:
    if fit.count(sentence) <= fit.context_length:
        return [sentence]
    parts, current = [], ""
    for word in sentence.split():
        candidate = f"{current} {word}".strip()
        if current and fit.count(candidate) > fit.context_length:
            parts.append(current)
            candidate = word
        current = candidate
    return parts + ([current] if current else [])


def class_texts(names: list[str], descriptions: list[list[str]] | None = None, split: TextFit | None = None) -> TextSet:
    """The strings the text tower encodes for a vocabulary.

    Without descriptions: the raw class names (the release uses no prompt template). With them:
    every description (sentence-split to fit ``split``, the text tower's context, when given), and
    the names are not encoded (§2.4).
    """
    if descriptions is None:
        return TextSet(list(names), np.arange(len(names), dtype=np.int64))
    strings: list[str] = []
    owner: list[int] = []
    for index, texts in enumerate(descriptions):
        for text in texts:
            pieces = split_sentences(text, split) if split else [text]
            strings.extend(pieces)
            owner.extend([index] * len(pieces))
    return TextSet(strings, np.asarray(owner, dtype=np.int64))
