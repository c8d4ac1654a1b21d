"""The package's layers: what each part may import, no import cycle, and a pure core.

The import graph is read from the source (every ``import`` statement, function-level ones
included: a lazy import is still a dependency), not from a running interpreter.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import verifier

PACKAGE = Path(verifier.__file__).parent

# Each module's layer: the longest matching name prefix.
LAYER_OF = {
    "verifier": "package",
    "verifier.__main__": "main",
    "verifier.__version__": "version",
    "verifier.core": "core",
    "verifier.accel": "accel",
    "verifier.net": "net",
    "verifier.records": "records",
    "verifier.logs": "logs",
    "verifier.metrics": "metrics",
    "verifier.workers": "workers",
    "verifier.settings": "settings",
    "verifier.settings_text": "settings",  # the configuration as text (reference, check)
    "verifier.service": "service",
    "verifier.http": "http",
    "verifier.sip": "sip",
    "verifier.sip.config": "settings",  # [sip], read by verifier.settings
    "verifier.testing": "testing",
    "verifier.cli": "cli",
    "verifier.trust_cli": "cli",  # verifier trust status|refresh
}

# The rules: the layers each layer may import besides its own.
BELOW_HTTP = {"core", "accel", "net", "records", "logs", "metrics", "workers", "settings"}
MAY_IMPORT: dict[str, set[str]] = {
    "version": set(),
    "core": set(),  # + the standard library and cryptography (CORE_THIRD_PARTY)
    "accel": {"core"},
    "net": {"core", "version"},
    "records": {"core"},
    "logs": set(),
    "workers": set(),
    "metrics": {"core", "accel"},
    "settings": {"core", "net", "records", "version"},  # net's and records' settings classes
    "service": BELOW_HTTP,
    "http": BELOW_HTTP | {"service", "sip", "version"},
    "sip": BELOW_HTTP | {"service"},
    "testing": BELOW_HTTP | {"service", "http", "version"},  # test PKI, repository, demo
    "cli": BELOW_HTTP | {"service", "http", "testing", "version"},
    "main": {"cli"},
    "package": {"core", "version"},  # re-exports the pure API
}
CORE_THIRD_PARTY = {"cryptography"}
NOT_IN_CORE = ("aiohttp", "redis", "psycopg", "ctypes", "_ctypes")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["verifier", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> tuple[set[str], set[str]]:
    """(the package's modules that ``module`` imports, the top-level names of the others)."""
    ours: set[str] = set()
    others: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            # ``from . import errors`` imports a module; ``from .x import name``, module x.
            names = [
                f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source
                for a in node.names
            ]
        for name in names:
            if name.split(".")[0] == "verifier":
                while name not in MODULES:
                    name = name.rpartition(".")[0]
                ours.add(name)
            else:
                others.add(name.split(".")[0])
    ours.discard(module)
    return ours, others


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def layer(module: str) -> str:
    prefix = module
    while prefix not in LAYER_OF:
        prefix = prefix.rpartition(".")[0]
    return LAYER_OF[prefix]


def test_every_layer_has_its_rule() -> None:
    assert set(LAYER_OF.values()) == set(MAY_IMPORT)
    # A new top-level module is placed in the table, not taken for the package itself.
    assert [] == [m for m in MODULES if layer(m) == "package" and m != "verifier"]
    assert {"core", "accel", "net", "records", "http", "service"} <= {layer(m) for m in MODULES}


def test_layers_import_only_what_the_table_allows() -> None:
    broken = sorted(
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, (ours, _) in GRAPH.items()
        for target in ours
        if layer(target) != layer(module) and layer(target) not in MAY_IMPORT[layer(module)]
    )
    assert [] == broken


def test_core_imports_only_the_standard_library_cryptography_and_itself() -> None:
    allowed = set(sys.stdlib_module_names) | CORE_THIRD_PARTY
    outside = sorted(
        f"{module} imports {name}"
        for module, (_, others) in GRAPH.items()
        if layer(module) == "core"
        for name in others
        if name not in allowed or name in NOT_IN_CORE
    )
    assert [] == outside


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"d"}, "e": {"a"}, "f": {"g"}}
    graph["g"] = {"f"}
    assert [["a", "b", "c"], ["f", "g"]] == sorted(_cycles(graph))
    assert [] == _cycles({"a": {"b"}, "b": {"c"}, "e": {"a", "b"}})


def test_no_import_cycle() -> None:
    assert [] == _cycles({module: ours for module, (ours, _) in GRAPH.items()})


_PROBE = """
import importlib, json, pkgutil, sys, threading
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
import verifier.core
for info in pkgutil.iter_modules(verifier.core.__path__):
    importlib.import_module("verifier.core." + info.name)
print(json.dumps({
    "modules": sorted(sys.modules),
    "threads": threading.active_count(),
    "opened": [p for p in opened if not p.endswith((".py", ".pyc"))],
}))
"""


def test_importing_the_core_loads_no_network_records_or_ctypes() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True
    ).stdout
    loaded = json.loads(out)
    heavy = [
        m
        for m in loaded["modules"]
        if m.split(".")[0] in NOT_IN_CORE
        or m.startswith(("verifier.accel", "verifier.net", "verifier.records", "verifier.http"))
    ]
    assert [] == heavy
    assert "verifier.core.verify" in loaded["modules"]
    assert 1 == loaded["threads"]
    assert [] == loaded["opened"]
