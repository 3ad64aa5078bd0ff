"""The floor plan (issue 12, docs/architecture.md) as checks on the source tree: each decision in one place.

These read the repository's own .py files (not tests, benchmarks' data or the venv) with `ast`, so they fail
the moment a change reintroduces a family-name comparison, an import circle, a function-local import of a
repository module, an entry script used as a library, or a file past the size limit.
"""

import ast
import os
import subprocess
import sys

import pytest

from conftest import ROOT, script_env

ENTRY_SCRIPTS = {"train", "generate", "dataset_tools", "elit_multibudget_inference", "evaluate",
                 "studies.fashion_mnist", "studies.classifier"}
# Where a family name may be compared or used as a key: the registry, the two dispatch tables.
FAMILY_TABLES = {"models/__init__.py", "loss.py", "samplers.py"}
MAX_LINES = 410                 # "no non-test file over ~400 lines" (issue 12)
SKIP_DIRS = {"tests", ".venv", ".git", "__pycache__", ".whl", "results", "exps", "data", ".data"}


def source_files() -> dict[str, str]:
    """Repository-relative path -> dotted module name, for every non-test .py file."""
    out = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), ROOT)
                mod = rel[:-3].replace(os.sep, ".")
                out[rel] = mod[:-9] if mod.endswith(".__init__") else mod
    return out


FILES = source_files()
MODULES = set(FILES.values())


def parse(rel: str) -> ast.Module:
    with open(os.path.join(ROOT, rel)) as f:
        return ast.parse(f.read(), rel)


def repo_imports(rel: str, tree: ast.Module):
    """(node, imported repository module, at top level?) for every import of a repository module."""
    package = FILES[rel] if rel.endswith("__init__.py") else FILES[rel].rpartition(".")[0]
    top = set(id(n) for n in tree.body)
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(p for p in parts + [base] if p)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            # the longest repository module this name refers to
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name:
                yield node, name, id(node) in top or _in_top_level_try(tree, node)


def _in_top_level_try(tree, node) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, (ast.Try, ast.If)) and any(n is node for n in ast.walk(stmt)):
            return True
    return False


def test_no_family_name_comparisons_outside_the_tables():
    bad = []
    for rel in FILES:
        if rel in FAMILY_TABLES:
            continue
        for node in ast.walk(parse(rel)):
            if isinstance(node, ast.Compare):
                consts = [c for c in [node.left, *node.comparators]
                          if isinstance(c, ast.Constant) and c.value in ("SiT", "ELIT-SiT", "DFM-SiT")]
                if consts:
                    bad.append(f"{rel}:{node.lineno}")
    assert not bad, f"family names compared outside {sorted(FAMILY_TABLES)}: {bad}"


def test_no_data_kind_branches_or_vae_factor_outside_dataio():
    """The codec seam (issue 12.2): only dataio/ asks whether the data are pixels or latents, and the SD-VAE
    factor is a named constant there, not a literal 8 elsewhere."""
    kinds, eights = [], []
    for rel in FILES:
        if rel.startswith("dataio" + os.sep):
            continue
        for node in ast.walk(parse(rel)):
            if isinstance(node, ast.Compare):
                if any(isinstance(c, ast.Constant) and c.value in ("pixels", "latents")
                       for c in [node.left, *node.comparators]):
                    kinds.append(f"{rel}:{node.lineno}")
            elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.FloorDiv, ast.Mult)) \
                    and isinstance(node.right, ast.Constant) and node.right.value == 8:
                eights.append(f"{rel}:{node.lineno}")
    assert not kinds, f"data-kind branches outside dataio/: {kinds}"
    assert not eights, f"a literal VAE factor 8 outside dataio/ (use dataio.codec.SD_VAE_FACTOR): {eights}"


def test_repository_imports_are_at_the_top_and_no_entry_script_is_imported():
    local, entry = [], []
    for rel, mod in FILES.items():
        tree = parse(rel)
        for node, name, at_top in repo_imports(rel, tree):
            if not at_top and name != mod:
                local.append(f"{rel}:{node.lineno} imports {name}")
            if name in ENTRY_SCRIPTS and name != mod:
                entry.append(f"{rel}:{node.lineno} imports {name}")
    assert not local, "function-local imports of repository modules: " + "; ".join(local)
    assert not entry, "entry scripts imported as libraries: " + "; ".join(entry)


def test_import_graph_is_acyclic():
    graph = {mod: set() for mod in MODULES}
    for rel, mod in FILES.items():
        for _, name, _ in repo_imports(rel, parse(rel)):
            if name != mod and not mod.startswith(name + "."):    # a module's own package is no edge
                graph[mod].add(name)
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_function_local_repository_imports():
    local = [f"{rel}:{node.lineno} imports {name}" for rel, mod in FILES.items()
             for node, name, at_top in repo_imports(rel, parse(rel)) if not at_top and name != mod]
    assert not local, "function-local imports of repository modules: " + "; ".join(local)


def test_no_source_file_is_over_the_size_limit():
    long = {}
    for rel in FILES:
        with open(os.path.join(ROOT, rel)) as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            long[rel] = n
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_importing_models_loads_nothing_else_of_ours():
    ours = sorted({m.split(".")[0] for m in MODULES} - {"models"})
    code = ("import sys, models; ours = %r; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ours))" % ours)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=script_env(), capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]", out
