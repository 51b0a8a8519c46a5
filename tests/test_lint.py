"""Layering and lint are checked, not hoped for: import-linter's contracts (.importlinter), ruff's
small rule set (ruff.toml), and no import cycles between modules (which import-linter has no
contract for)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from helpers import REPO, run_cmd


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    if not exe.exists():
        pytest.fail(f"{name} is not installed next to {sys.executable}: pip install -e '.[dev]'")
    return str(exe)


def test_import_contracts_are_kept():
    proc = run_cmd([_tool("lint-imports"), "--no-cache"], env={"PYTHONPATH": str(REPO)}, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_ruff_is_clean():
    proc = run_cmd([_tool("ruff"), "check", "--no-cache", "."], check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module, or a self-import."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1 or v in graph[v]:
                        out.append(sorted(comp))
    return out


def test_strongly_connected_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "d"}, "e": set()}
    assert sorted(strongly_connected(graph)) == [["a", "b", "c"], ["d"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    """Every import counts, also those inside functions; only `if TYPE_CHECKING:` imports are left out."""
    import grimp

    g = grimp.build_graph("remix_ds", exclude_type_checking_imports=True, cache_dir=None)
    graph = {m: set(g.find_modules_directly_imported_by(m)) & g.modules for m in g.modules}
    assert len(graph) > 50  # the whole package was found
    assert strongly_connected(graph) == []


def test_kernels_import_nothing_from_the_package():
    """kernels/ installs as remix_ds.kernels (a namespace subpackage through a symlink), which
    import-linter may not see: it is the lowest layer above config, and imports no other remix_ds module."""
    found = []
    for path in sorted((REPO / "kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{path.name}:{node.lineno} {n}" for n in names
                      if n.startswith("remix_ds") and not n.startswith("remix_ds.kernels")]
    assert len(list((REPO / "kernels").glob("*.py"))) >= 2
    assert found == []
