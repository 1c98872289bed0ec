"""The house's structure: brisk's modules import each other without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The brisk modules ``path`` imports when it is itself imported: statements at module level
    (inside ``if``/``try`` blocks too), not those inside functions or classes' methods."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                found.add(base)
                # ``from brisk.models import i3d`` imports the submodule brisk.models.i3d
                found.update(f"{base}.{a.name}" for a in node.names)
            elif isinstance(node, ast.If | ast.Try | ast.With):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])

    visit(ast.parse(path.read_text()).body)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in (SRC / "brisk").rglob("*.py")}
    return {name: module_level_imports(path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_the_finder_sees_a_cycle_and_ignores_function_level_imports(tmp_path: Path) -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    # registry.py imports pretrained inside create_model only: not an edge
    assert "brisk.models.pretrained" not in graph["brisk.models.registry"]
    assert "brisk.models.pretrained" in graph["brisk.models.i3d"]  # a module-level one is


def test_brisk_has_no_module_level_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_pretrained_weights_know_no_network() -> None:
    # anywhere in the file, functions included: each network declares its checkpoint layout
    imported = all_imports(SRC / "brisk" / "models" / "pretrained.py")
    assert not {m for m in imported if m.startswith("brisk.models")}, imported


def all_imports(path: Path) -> set[str]:
    """Every module ``path`` names in an import, at any level (functions included)."""
    tree = ast.parse(path.read_text())
    found = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return found | {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}


def test_config_imports_nothing_from_the_video_package() -> None:
    # the config package sits below the feature packages: the video data sets' schema and checks
    # live in brisk.video.settings, registered by the config tree (brisk.conf)
    for path in (SRC / "brisk" / "config").rglob("*.py"):
        video = {m for m in all_imports(path) if m.startswith("brisk.video")}
        assert not video, (path.name, video)
