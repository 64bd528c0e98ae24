"""Who may import whom (docs/architecture.md): nothing below lit_modules imports it, nothing outside entrypoints
(and ``python -m`` shims) imports entrypoints, only entrypoints import the studio, and the module import graph of src/grn has no cycle. Every import counts, function-level
ones included, since a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "grn"
# the packages and modules below the training modules
BELOW_LIT = ("datamodules", "models", "distributed", "callbacks", "sampling", "metrics", "checkpoints", "losses",
             "hbq.py", "objective.py", "precision.py", "io.py", "pipeline.py", "text_pipeline.py",
             "pipeline_output.py", "prompts.py", "pipeline_hub.py", "model_card.py", "hub.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str | None = None) -> set[str]:
    """Every grn module ``path`` (module ``name``, default: from its place in src/grn) imports, absolute and
    relative, at any depth of the file."""
    tree = ast.parse(path.read_text(), str(path))
    here = (name or module_name(path)).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "grn")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "grn":
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names)
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    return {name: {m for m in imports(path) if m in files and m != name} for name, path in files.items()}


def test_nothing_below_lit_modules_imports_them_and_only_entrypoints_import_entrypoints():
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        found = imports(path)
        if rel.startswith(BELOW_LIT) and any(m.startswith("grn.lit_modules") for m in found):
            bad.append(f"{rel} imports grn.lit_modules")
        # a ``python -m`` shim (grn/studio/__main__.py) is a main, like train.py at the root
        is_main = rel.startswith("entrypoints/") or path.name == "__main__.py"
        if not is_main and any(m.startswith("grn.entrypoints") for m in found):
            bad.append(f"{rel} imports grn.entrypoints")
        if not is_main and not rel.startswith("studio/") and any(m.startswith("grn.studio") for m in found):
            bad.append(f"{rel} imports grn.studio")
        if rel.startswith("studio/") and any(m.startswith("grn.lit_modules") for m in found):
            bad.append(f"{rel} imports grn.lit_modules")
    assert not bad, bad


def test_the_module_graph_has_no_cycle():
    g = graph()
    # package __init__ files re-export their own modules; an edge into one's own package is not a dependency
    g = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in g.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(g):
        if m not in state and (cycle := visit(m)):
            raise AssertionError(" -> ".join(cycle))


def test_the_checker_sees_upward_and_relative_imports(tmp_path):
    """The checker itself: a lazy absolute import and a relative one are both found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from grn.lit_modules import generator\n    from ..entrypoints import eval\n")
    found = imports(probe, "grn.sampling.probe")
    assert "grn.lit_modules.generator" in found and "grn.entrypoints.eval" in found
