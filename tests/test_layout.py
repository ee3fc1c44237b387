"""The source tree's floor plan holds: the write path (indexer) never imports the read path (engine), no two
modules import each other, directly or around a loop (counting imports inside functions too), and the
README's module table names every module there is."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("engine", "indexer")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return "xmodal." + ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for root in ROOTS for p in sorted((REPO / root).rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The xmodal modules a file imports anywhere in it (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name in known:
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    # importing a package's submodule runs the package's __init__ too, but an __init__ that imports nothing
    # adds no edge; edges to packages are kept only where the package itself is imported
    return {m: imports(p, known) - {m} for m, p in mods.items()}


def test_the_write_path_never_imports_the_read_path():
    bad = sorted(f"{m} imports {d}" for m, deps in graph().items() if m.startswith("xmodal.indexer")
                 for d in deps if d.startswith("xmodal.engine"))
    assert bad == []


def test_no_module_imports_another_that_imports_it_back():
    g = graph()
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for d in sorted(g.get(m, ())):
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_readme_module_table_names_every_module():
    table = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`((?:engine|indexer)/[\w/]+\.py)`", table))
    present = {str(p.relative_to(REPO)) for root in ROOTS for p in (REPO / root).rglob("*.py")
               if p.name != "__init__.py" and p.name != "__main__.py"}
    assert sorted(present - listed) == [], "modules missing from docs/architecture.md"
    assert sorted(listed - present) == [], "docs/architecture.md names modules that do not exist"


def test_sqlalchemy_stays_inside_the_store():
    users = sorted(str(p.relative_to(REPO)) for root in ROOTS for p in (REPO / root).rglob("*.py")
                   if re.search(r"^\s*(from|import) sqlalchemy", p.read_text(encoding="utf-8"), flags=re.M))
    assert users == ["indexer/storage/schema.py", "indexer/storage/store.py"]
