"""The package's shape, read from its source: no import circle between modules or packages, and
the head's species input decided in one module (anim_clip/models/inputs.py), so a new command
cannot quietly derive it a second, different way."""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "anim_clip"
DECIDES = "anim_clip/models/inputs.py"  # the one module that turns a config into the head's inputs
# Names the species decision went by before it was one value; none may come back.
RETIRED = {"external_species", "predicts_species", "conditions_on_predictor", "needs_patches", "with_patches"}
# Where a config's species.model is asked whether it is set: the decision, and extraction (whether
# phase one caches the predictor's probabilities, a question about the cache, not the head).
ASKS_FOR_PREDICTOR = {DECIDES, "anim_clip/cache/extract.py"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules ``name`` imports anywhere in it (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one node (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def test_no_module_imports_itself_round_a_circle():
    assert cycles(import_graph()) == []


def test_no_package_imports_itself_round_a_circle():
    def package(name: str) -> str:
        return ".".join(name.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for name, targets in import_graph().items():
        graph.setdefault(package(name), set()).update(package(t) for t in targets if package(t) != package(name))
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    """The oracle above would pass vacuously if it found nothing ever: it must find a known circle."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def source_files() -> Iterator[tuple[str, ast.AST]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE.parent).as_posix(), ast.parse(path.read_text())


def is_config(node: ast.AST) -> bool:
    """``cfg``, ``config``, ``x.cfg``, ``x.config.model``...: an expression naming a config section."""
    text = ast.unparse(node)
    return text.split(".")[-1] in {"model", "cfg", "config"} or "cfg" in text or "config" in text


def species_decisions(tree: ast.AST) -> list[str]:
    """Where a module derives the head's inputs from a config: it reads ``model.species_source`` or
    ``model.video_specific_prompt`` off a config, or asks whether ``species.model`` is set."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("species_source", "video_specific_prompt"):
            if is_config(node.value):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value is None
                                                 for c in node.comparators):
            if ast.unparse(node.left).endswith("species.model"):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        if isinstance(node, (ast.Name, ast.Attribute, ast.FunctionDef, ast.arg)):
            name = getattr(node, "id", None) or getattr(node, "attr", None) or getattr(node, "name", None) or node.arg
            if name in RETIRED:
                found.append(f"line {node.lineno}: {name} (a retired name of the decision)")
    return found


def test_the_head_inputs_are_decided_in_one_module():
    elsewhere = {}
    for file, tree in source_files():
        found = species_decisions(tree)
        if file == DECIDES:
            assert found, f"{DECIDES} no longer makes the decision this test guards"
        elif file in ASKS_FOR_PREDICTOR:
            found = [f for f in found if "species.model" not in f]
        if found and file != DECIDES:
            elsewhere[file] = found
    assert elsewhere == {}, f"the head's inputs are derived outside {DECIDES}: {elsewhere}"


def test_a_second_derivation_is_caught(tmp_path: Path):
    """The guard above reads what a new command would write to decide again."""
    written = ("def scores(cfg, head):\n"
               "    if cfg.model.species_source == 'predicted' and cfg.species.model is not None:\n"
               "        return head.external_species\n")
    assert len(species_decisions(ast.parse(written))) == 3
    harmless = "def row(prediction):\n    return prediction.species_source, head.inputs.species == 'predictor'\n"
    assert species_decisions(ast.parse(harmless)) == []


DESIGN = PACKAGE.parent / "docs" / "design.md"
STAGE_NAME = re.compile(r"\b(?:data|frames|cache|models|evaluate|predict|export|analysis|train|runtime)(?:\.\w+)+")


def data_way() -> list[list[str]]:
    """The names each stage of docs/design.md's data-way diagram cites, stage by stage (a stage is a
    line starting at the left margin, with the lines under it)."""
    text = DESIGN.read_text()
    block = text.split("<!-- data-way: begin -->")[1].split("<!-- data-way: end -->")[0]
    stages: list[list[str]] = []
    for line in block.strip().strip("`").splitlines():
        if line[:1].isalpha():
            stages.append([])
        if stages:
            stages[-1] += STAGE_NAME.findall(line)
    return [names for names in stages if names]


def resolve(dotted: str) -> object:
    """The package object ``dotted`` (relative to anim_clip) names: the longest module prefix
    imported, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(["anim_clip", *parts[:cut]]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def owner(dotted: str) -> str:
    """The module a cited name lives in."""
    known = modules()
    parts = ["anim_clip", *dotted.split(".")]
    return next(".".join(parts[:cut]) for cut in range(len(parts), 0, -1) if ".".join(parts[:cut]) in known)


def test_the_data_way_diagram_names_what_the_code_has_in_the_order_it_imports():
    stages = data_way()
    assert len(stages) >= 6, stages  # videos, frames, features, head inputs, scores, reports
    for names in stages:
        for name in names:
            assert resolve(name) is not None, name
    graph = import_graph()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    # a stage's code knows its own values and the ones it makes (the next stage's), never those further on
    for k, names in enumerate(stages):
        mine = {owner(n) for n in names} | {owner(n) for n in (stages[k + 1] if k + 1 < len(stages) else [])}
        further = {owner(n) for stage in stages[k + 2:] for n in stage} - mine
        for module in {owner(n) for n in names}:
            assert not reaches(module) & further, f"{module} (stage {k}) imports {reaches(module) & further}"
