"""The import graph follows the architecture: imports only go downward."""

import ast
import pathlib

import sparkler

ROOT = pathlib.Path(sparkler.__file__).parent

# Layer of each top-level part of the package; a module may import only its own layer or lower ones.
LAYERS = {
    "errors": 0,
    "logger": 0,
    "metrics": 0,
    "host": 0,
    "seccomp": 0,
    "kvm": 1,
    "memory": 1,
    "ratelimit": 1,
    "arch": 2,
    "devices": 2,
    "config": 2,
    "mmds": 2,
    "vmm": 3,
    "api": 4,
    "cli": 5,
    "demo": 5,
    "guest": 5,
    "hostnet": 5,
    "sdk": 5,
    "testing": 5,
    "__main__": 6,
}


# The process runtime sits on top of the VMM and starts the API server (ARCHITECTURE.md: vmm/runtime.py
# "may import vmm.*, api.server"); nothing else below the API may import it.
RUNTIME_MODULES = {"sparkler.vmm.runtime", "sparkler.vmm.api_runtime"}


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name


def test_layering_no_upward_imports():
    problems = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts)
        part = _part(module)
        if part not in LAYERS:
            continue
        for imported in _imports(path):
            if not imported.startswith("sparkler."):
                continue
            target = _part(imported)
            if module in RUNTIME_MODULES and target == "api":
                continue
            if target in LAYERS and LAYERS[target] > LAYERS[part]:
                problems.append(f"{module} imports {imported}")
    assert problems == []


def test_layering_package_init_imports_nothing():
    assert list(_imports(ROOT / "__init__.py")) == []
