"""The GPU benchmark scripts cannot run here, but every name they import from the repository must exist.

A renovation that moves a name they import breaks them silently until the next GPU session; this catches it
at CI time without running them.
"""
import ast
import importlib
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
OURS = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} | {p.stem for p in ROOT.glob("*.py")}


def repository_imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS:
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in OURS:
                    yield alias.name, None


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_imports_resolve(script):
    for module, name in repository_imports(script):
        loaded = importlib.import_module(module)
        assert name is None or hasattr(loaded, name) or importlib.util.find_spec(f"{module}.{name}"), \
            f"{script.name} imports {name} from {module}, which no longer has it"
