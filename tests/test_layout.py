"""The package's layout holds: no import circle between its modules (top-level and function-level
imports alike), and inference/, serve/ and evaluation/ never import training/ (docs/design.md,
"Layout"). Read from the source with ast: nothing is imported to check it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "speechllama"
NEVER_TRAINING = ("speechllama.inference", "speechllama.serve", "speechllama.evaluation")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (anywhere in it): ``from X import name`` counts
    as X.name where that is a module, else X."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                out.add(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target)
    return {m for m in out if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports(p, modules) for p in files}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert cycles(graph()) == []


def test_inference_serve_and_evaluation_never_import_training():
    bad = [(m, t) for m, targets in graph().items() if m.startswith(NEVER_TRAINING)
           for t in targets if t.startswith("speechllama.training")]
    assert bad == []


def test_the_checks_see_a_circle_and_a_training_import(tmp_path, monkeypatch):
    """The two checks fail where they should: a made-up package with a -> b -> a, and an
    inference module importing training."""
    pkg = tmp_path / "speechllama"
    for rel, text in {"__init__.py": "", "a.py": "from . import b\n", "b.py": "def f():\n    from .a import x\n",
                      "inference/__init__.py": "", "inference/api.py": "from ..training.loop import fit\n",
                      "training/__init__.py": "", "training/loop.py": "fit = 1\n"}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    assert cycles(graph()) == [["speechllama.a", "speechllama.b"]]
    with pytest.raises(AssertionError):
        test_inference_serve_and_evaluation_never_import_training()


def test_the_import_paths_users_rely_on_keep_working():
    import speechllama
    from speechllama.decode import DecodingOptions
    from speechllama.inference import Job, SpeechToText, Transcript
    from speechllama.models.decode import DecodingOptions as moved
    from speechllama.subtitles import render

    assert DecodingOptions is moved and callable(render) and Job and SpeechToText and Transcript
    assert all(callable(getattr(speechllama, n)) for n in ("load", "load_audio", "fbank", "ctc_compress"))
