"""Parsers for the Animal-CLIP release's list files, exactly as shipped (docs/method.md §4.2).

The traps they handle: UTF-8 byte-order marks (MammalNet), CRLF line ends (most files), AK pair
lists that look like Python literals but are not (``('Russell's Viper', 'Keeping still')``),
LoTE paths with a folder (``Parental/MacacaThibetana3734.avi``) and a missing final newline.
Every malformed line is reported with its file and line number.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from anim_clip.errors import DatasetFormatError


def read_lines(path: str | Path) -> list[str]:
    """Lines without BOM or CR/LF; a missing file or a byte that is not UTF-8 is a clear error
    naming the line, not a traceback."""
    path = Path(path)
    try:
        data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    except FileNotFoundError:
        raise DatasetFormatError(path, "file not found") from None
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        raise DatasetFormatError(path, f"not UTF-8 text: byte 0x{data[e.start]:02x} at byte {e.start - line_start + 1} of "
                                       "the line; save the file as UTF-8", data.count(b"\n", 0, e.start) + 1) from None


def read_class_list(path: str | Path) -> list[str]:
    """A two-column ``id,name`` CSV with a header (label.csv, animal_label.csv, behavior_to_id.csv…).

    Ids must run 0..n-1; rows may come in any order. Returned: names indexed by id.
    """
    lines = read_lines(path)
    if not lines:
        raise DatasetFormatError(path, "empty file; expected a header line such as 'id,name'")
    names: dict[int, str] = {}
    for number, row in enumerate(csv.reader(io.StringIO("\n".join(lines[1:]))), start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise DatasetFormatError(path, f"expected 'id,name', got {','.join(row)!r}", number)
        try:
            index = int(row[0])
        except ValueError:
            raise DatasetFormatError(path, f"id {row[0]!r} is not an integer", number) from None
        if index in names:
            raise DatasetFormatError(path, f"id {index} appears twice", number)
        names[index] = ",".join(row[1:]).strip()
    if sorted(names) != list(range(len(names))):
        missing = sorted(set(range(max(names, default=-1) + 1)) - set(names))
        raise DatasetFormatError(path, f"ids must run 0..{len(names) - 1}; missing {missing[:5]}")
    return [names[i] for i in range(len(names))]


def read_name_list(path: str | Path) -> list[str]:
    """Class names for a user dataset: an ``id,name`` CSV, or plain text with one name per line."""
    lines = [line for line in read_lines(path) if line.strip()]
    if lines and re.fullmatch(r"\s*id\s*,.*|\s*label\s*,.*", lines[0], flags=re.IGNORECASE):
        return read_class_list(path)
    return [line.strip() for line in lines]


_INT_LIST = re.compile(r"^\[\s*(\d+(?:\s*,\s*\d+)*)?\s*\]$")


def read_relation(path: str | Path, num_actions: int | None = None) -> list[tuple[str, list[int]]]:
    """``<species> TAB [<action ids>] TAB <count>`` lines, in file order (= species list order)."""
    out: list[tuple[str, list[int]]] = []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DatasetFormatError(path, "expected '<species>\\t[<action ids>]\\t<count>'", number)
        name, ids_text, count = parts[0].strip(), parts[1].strip(), parts[2].strip()
        match = _INT_LIST.match(ids_text)
        if match is None:
            raise DatasetFormatError(path, f"action list {ids_text!r} is not a list of integers", number)
        ids = [int(v) for v in match.group(1).split(",")] if match.group(1) else []
        if not count.isdigit() or int(count) != len(ids):
            raise DatasetFormatError(path, f"count {count!r} does not match {len(ids)} listed actions", number)
        if num_actions is not None and any(i >= num_actions for i in ids):
            raise DatasetFormatError(path, f"action id {max(ids)} out of range (0..{num_actions - 1})", number)
        out.append((name, ids))
    return out


@dataclass(frozen=True)
class SplitEntry:
    """One line of a split list: a video path and its (species, action) annotations by name or id."""

    path: str
    pairs: tuple[tuple[str | int | None, str | int], ...]  # (species, action)
    line: int


def _parse_pair_list(text: str) -> list[tuple[str, str]]:
    """``[('A', 'x'), ('B', 'y')]`` with unescaped apostrophes inside names.

    The release also has a pair with its opening quote missing (``(Portugese Man O'War', …)``,
    AK train line 1106), so the outer quotes are optional.
    """
    text = text.strip()
    if not (text.startswith("[(") and text.endswith(")]")):
        raise ValueError("expected a list of ('species', 'action') pairs")
    pairs = []
    for item in text[2:-2].split("), ("):
        fields = item.split("', '")
        if len(fields) != 2:
            raise ValueError(f"cannot read pair ({item})")
        species, action = fields[0].removeprefix("'"), fields[1].removesuffix("'")
        if not species or not action:
            raise ValueError(f"empty name in pair ({item})")
        pairs.append((species, action))
    return pairs


def read_ak_split(path: str | Path) -> list[SplitEntry]:
    """AK split (train_all.txt / test_animal.txt): ``<file> TAB [('<species>', '<action>'), …]``."""
    entries = []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        file, sep, rest = line.partition("\t")
        if not sep or not file.strip():
            raise DatasetFormatError(path, "expected '<file>\\t[(<species>, <action>), ...]'", number)
        try:
            pairs = _parse_pair_list(rest)
        except ValueError as e:
            raise DatasetFormatError(path, str(e), number) from None
        entries.append(SplitEntry(file.strip(), tuple(pairs), number))
    return entries


def read_id_split(path: str | Path) -> list[SplitEntry]:
    """MammalNet / LoTE split: ``<file> <action id> <species id>`` separated by spaces."""
    entries = []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise DatasetFormatError(path, "expected '<file> <action id> <species id>'", number)
        entries.append(SplitEntry(parts[0], ((int(parts[2]), int(parts[1])),), number))
    return entries


def read_csv_split(path: str | Path) -> list[SplitEntry]:
    """A user's CSV: header ``path,actions,species``; several labels separated by ``;``.

    The species column is optional (absent, or empty on a line). Actions and species are names.
    Every action of a clip is paired with every species of that clip.
    """
    lines = read_lines(path)
    if not lines:
        raise DatasetFormatError(path, "empty file; expected a header 'path,actions,species'")
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    header = [h.strip().lower() for h in rows[0]]
    if header[:2] != ["path", "actions"] or header[2:] not in ([], ["species"]):
        raise DatasetFormatError(path, f"header must be 'path,actions[,species]', got {','.join(rows[0])!r}", 1)
    entries = []
    for number, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) not in (2, 3) or len(row) > len(header):
            raise DatasetFormatError(path, f"expected {len(header)} fields, got {len(row)}", number)
        actions = [a.strip() for a in row[1].split(";") if a.strip()]
        if not row[0].strip() or not actions:
            raise DatasetFormatError(path, "a clip needs a path and at least one action", number)
        species: list[str | None] = [s.strip() for s in row[2].split(";") if s.strip()] if len(row) == 3 else []
        pairs = tuple((s, a) for s in (species or [None]) for a in actions)
        entries.append(SplitEntry(row[0].strip(), pairs, number))
    return entries
