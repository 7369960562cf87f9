"""The package's layering: the command line is only a command line, no import circles, light imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from basam.cli import main

SRC = Path(__file__).resolve().parents[1] / "src" / "basam"
#: the components whose imports must form no circle (issue: cli, evaluate, bench, train, attention, kernels)
COMPONENTS = ("cli", "evaluate", "bench", "train", "attention", "kernels")


def _component(module: str) -> str:
    """``basam.cli.options`` -> ``cli``; ``basam.attention_config`` stays its own component."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(path: Path) -> set:
    """Every basam module ``path`` imports, at module level or inside functions (both are edges)."""
    package = list(path.relative_to(SRC.parent).with_suffix("").parts[:-1])  # the package holding the module
    out = set()
    tree = ast.parse(path.read_text())
    # ``if __name__ == "__main__":`` blocks and __main__.py files are entry points of the command
    # line (``python -m basam.evaluate`` under torchrun): they never run on import, so they are no edge.
    if path.name == "__main__.py":
        return out
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            tree.body.remove(node)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                # ``from . import x`` imports the module x; ``from .m import y`` imports m
                out.update([f"{target}.{a.name}" for a in node.names] if not node.module else [target])
            elif node.module and node.module.startswith("basam"):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("basam"))
    return out


def component_graph() -> dict:
    graph: dict = {}
    for path in SRC.rglob("*.py"):
        rel = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        src = _component(rel.replace(".__init__", ""))
        for target in _imports(path):
            dst = _component(target)
            if dst != src:
                graph.setdefault(src, set()).add(dst)
    return graph


def find_cycle(graph: dict, nodes) -> list:
    """A cycle through ``nodes`` only (as a list of components), or [] if there is none."""
    nodes = set(nodes)
    state: dict = {}
    stack: list = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if m not in nodes:
                continue
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return []

    for n in sorted(nodes):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "abc") == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}, "abc") == []


def test_no_import_circle_among_the_layers():
    graph = component_graph()
    assert graph.get("cli"), "the import graph of basam.cli is empty: the parser is broken"
    assert find_cycle(graph, COMPONENTS) == [], f"import circle: {' -> '.join(find_cycle(graph, COMPONENTS))}"


@pytest.mark.parametrize("library", ["evaluate", "bench", "train", "coco", "attention", "kernels"])
def test_library_modules_never_import_the_command_line(library):
    graph = component_graph()
    assert "cli" not in graph.get(library, set()), f"basam.{library} imports basam.cli"


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_help_does_not_import_torch():
    out = _run("import sys\nfrom basam.cli import main\nrc = main(['--help'])\n"
               "print('@@', rc, 'torch' in sys.modules)\n")
    assert "@@ 0 False" in out, out
    assert "segment" in out and "evaluate" in out and "bench" in out


def test_import_basam_is_light_and_names_resolve():
    out = _run("import sys, basam\nprint('@@', 'torch' in sys.modules)\n"
               "print('@@', basam.Predictor.__name__, basam.load_model.__name__, sorted(basam.PRESETS))\n")
    assert "@@ False" in out
    assert "@@ Predictor load_model ['basam', 'nsf', 'vanilla']" in out
    with pytest.raises(AttributeError):
        import basam

        basam.no_such_name  # noqa: B018


@pytest.mark.parametrize("argv, extra", [
    (["evaluate", "--data", "d", "--out", "o"], "eval"),
    (["evaluate-coco", "--images", "i", "--annotations", "a.json"], "eval"),
    (["train", "--data", "d", "--out", "o"], "train"),
])
def test_missing_extra_is_one_line_exit_2(argv, extra, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "py_sod_metrics", None)  # as if the extra were not installed
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert f"[{extra}]" in err and "pip install" in err and "pysodmetrics" in err
    assert not any(tmp_path.iterdir()), "nothing may be written"
