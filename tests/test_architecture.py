"""The layers of docs/architecture.md: no module imports a module of a higher layer, not even
lazily inside a function (a lazy upward import is still a dependency)."""

import ast
from pathlib import Path

import macflow

ROOT = Path(macflow.__file__).parent
LAYERS = {
    "macflow": 0,
    "macflow.spec": 0,
    "macflow.files": 0,
    "macflow.progress": 0,
    "macflow.nn": 0,
    "macflow.deploy": 0,
    "macflow.envs": 1,
    "macflow.data": 1,
    "macflow.agents": 2,
    "macflow.trainers": 2,
    "macflow.loop": 3,
    "macflow.evaluate": 3,
    "macflow.online": 3,
    "macflow.online_loop": 3,
    "macflow.runs": 4,
    "macflow.train": 4,
    "macflow.finetune": 4,
    "macflow.export": 4,
    "macflow.sweep": 5,
    "macflow.aggregate": 5,
    "macflow.api": 6,
    "macflow.cli": 6,
    "macflow.quickstart": 6,
    "macflow.report": 6,
    "macflow.__main__": 6,
}


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in LAYERS:
            return LAYERS[name]
    raise KeyError(f"{module}: not in docs/architecture.md's layers")


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "macflow":  # `from macflow import loop` imports macflow.loop
                names += [f"macflow.{a.name}" for a in node.names]
            found.update(n for n in names if n.split(".")[0] == "macflow")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "macflow")
    return found


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        mod = module_of(path)
        for dep in sorted(imports(path)):
            known = dep in LAYERS or any(dep.startswith(k + ".") for k in LAYERS if k != "macflow")
            if known and layer(dep) > layer(mod):
                upward.append(f"{mod} (layer {layer(mod)}) imports {dep} (layer {layer(dep)})")
    assert not upward, "\n".join(upward)


def test_every_module_has_a_layer():
    for path in ROOT.rglob("*.py"):
        layer(module_of(path))
