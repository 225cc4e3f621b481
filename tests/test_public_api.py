"""The numba backend and the optimizer kernels use only public names of numba, llvmlite, numpy
and scipy: no module below their public packages, no underscored attribute.

A private name can change in any release, which would break ``import scratchnet`` on a version
pyproject.toml admits; this scan catches one at review time rather than on a user's machine.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = [os.path.join(d, f) for d, _, files in
           os.walk(os.path.join(ROOT, "scratchnet", "backends", "numba_backend"))
           for f in files if f.endswith(".py")]
SOURCES.append(os.path.join(ROOT, "scratchnet", "optim", "kernels.py"))

# modules of the libraries that may be imported, and nothing below them
PUBLIC_MODULES = {"numba", "numba.extending", "numpy", "llvmlite", "llvmlite.ir",
                  "llvmlite.binding", "scipy", "scipy.linalg", "scipy.linalg.cython_blas",
                  "threadpoolctl"}
LIBRARIES = {"numba", "numpy", "llvmlite", "scipy", "threadpoolctl"}


def _library_imports(tree):
    """(module, line) of every import of one of LIBRARIES, and the local names bound to them."""
    found, aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in LIBRARIES:
                    found.append((a.name, node.lineno))
                    aliases.add((a.asname or a.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in LIBRARIES:
                found.append((node.module, node.lineno))
                for a in node.names:
                    found.append((f"{node.module}.{a.name}", node.lineno))
                    aliases.add(a.asname or a.name)
    return found, aliases


def _private_attributes(tree, aliases):
    """(dotted name, line) of every attribute chain rooted at a library alias with a component
    that starts with an underscore (dunders such as __version__ allowed)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in aliases:
                private = [p for p in parts if p.startswith("_") and not p.endswith("__")]
                if private:
                    out.append((".".join([inner.id] + parts[::-1]), node.lineno))
    return out


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: os.path.relpath(p, ROOT))
def test_only_public_names(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imports, aliases = _library_imports(tree)
    bad = [f"line {line}: import of {name}" for name, line in imports
           if name.split(".")[-1].startswith("_")
           or (name not in PUBLIC_MODULES and name.rsplit(".", 1)[0] not in PUBLIC_MODULES)]
    bad += [f"line {line}: private attribute {name}"
            for name, line in _private_attributes(tree, aliases)]
    assert not bad, f"{os.path.relpath(path, ROOT)}: " + "; ".join(bad)


def test_the_scan_finds_private_names():
    """The scan itself: each kind of private use is reported."""
    tree = ast.parse("import numba\nfrom numba.core import cgutils\n"
                     "from numba.experimental.function_type import _get_jit_address\n"
                     "numba.parallel._launch_threads()\nf._compile_for_args\n")
    imports, aliases = _library_imports(tree)
    names = [n for n, _ in imports]
    assert "numba.core" in names and "numba.experimental.function_type._get_jit_address" in names
    assert [n for n, _ in _private_attributes(tree, aliases)] == ["numba.parallel._launch_threads"]
