"""The house's layers (runtime/README.md): a module imports only lower layers and its own package.

Every import counts, at module level or inside a function, so a lazy import cannot hide an
arrow against the layers; and no two files import each other, directly or around a loop."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = [
    ["runtime.core", "runtime.protos"],
    ["runtime.data", "runtime.sandbox"],
    ["runtime.model"],
    ["rl"],
    ["actors"],
    ["runtime.supervision"],
    ["runtime.pools"],
    ["serve"],
    ["runtime.jobs"],
    ["runtime.cli"],
]
"""Lowest first. Packages on one floor do not import each other."""
PACKAGES = ("runtime", "actors", "serve", "rl")


def package_of(module: str) -> str | None:
    if module in PACKAGES:
        return "runtime.core" if module == "runtime" else module  # the empty root of runtime/ holds nothing
    found = [p for floor in LAYERS for p in floor if module == p or module.startswith(p + ".")]
    return max(found, key=len) if found else None


def floor_of(package: str) -> int:
    return next(i for i, floor in enumerate(LAYERS) if package in floor)


def modules() -> dict[str, Path]:
    found = {}
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, module: str, known: dict[str, Path]) -> set[str]:
    """Every project module `path` imports (`from package import module` counts as the module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: -node.level + (1 if path.name == "__init__.py" else 0) or None]
                base = ".".join(parent + ([base] if base else []))
            names |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {n for n in names if n.split(".")[0] in PACKAGES}


def arrows() -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for module, path in known.items():
        targets = {max((k for k in known if name == k or name.startswith(k + ".")), key=len, default=None)
                   for name in imports(path, module, known)}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in graph.items():
        own = package_of(module)
        if own is None:
            found.append(f"{module}: in no layer")
            continue
        for target in sorted(targets):
            theirs = package_of(target)
            if theirs is None:
                found.append(f"{module} -> {target}: target in no layer")
            elif theirs != own and floor_of(theirs) >= floor_of(own):
                found.append(f"{module} (floor {floor_of(own)}) -> {target} (floor {floor_of(theirs)})")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_runs_against_the_layers():
    assert violations(arrows()) == []


def test_no_files_import_each_other():
    assert cycles(arrows()) == []


@pytest.mark.parametrize("module, target", [
    ("actors.weight_broadcaster", "serve.weight_service"),      # an actor knowing the outside face
    ("runtime.sandbox.remote", "serve.sandbox_service"),        # a backend knowing the servicer
    ("runtime.data.sources", "rl.procedural"),                  # the data layer knowing a task family
    ("rl.algorithms.grpo", "runtime.jobs.rl_loop"),             # maths knowing the orchestration
    ("actors.trainer_shard", "runtime.pools.trainer_group"),    # an actor knowing who spawns it
])
def test_the_rule_catches_arrows_against_it(module, target):
    graph = arrows()
    graph[module] = graph[module] | {target}
    assert any(v.startswith(f"{module} ") and target in v for v in violations(graph))


def test_the_cycle_check_catches_two_files_that_import_each_other():
    graph = arrows()
    graph["runtime.sandbox.base"] = graph["runtime.sandbox.base"] | {"runtime.sandbox.bubblewrap"}
    assert any({"runtime.sandbox.base", "runtime.sandbox.bubblewrap"} <= set(c) for c in cycles(graph))
