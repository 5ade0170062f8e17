"""The package's import structure: no import cycles, no module using another's underscore names, lazy API."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ertacli"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def resolve(current: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative levels resolved against `current`)."""
    if node.level == 0:
        return node.module or ""
    base = current.split(".") if is_pkg else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(imported ertacli module, names taken from it) for every import in the file, function bodies included."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "ertacli"]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(name, path.name == "__init__.py", node)
            if target.split(".")[0] != "ertacli":
                continue
            names = [a.name for a in node.names]
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            out += [(s, []) for s in subs]
            rest = [n for n in names if f"{target}.{n}" not in known]
            if rest or not subs:
                out.append((target, rest))
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {t for t, _ in imports(name, path, known) if t in known and t != name}
            for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, f"import cycles: {found}"


def test_no_module_imports_another_modules_private_names():
    known = modules()
    bad = [f"{name} imports {n} from {target}" for name, path in known.items()
           for target, names in imports(name, path, known) for n in names
           if n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


# The package's layers, lowest first: a module imports only from its own layer or a lower one. Every module belongs
# to exactly one (a new top-level module must be placed here). tinytrain (retraining the tiny models) is a tool on
# top: no library module imports it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("ertacli", "ertacli.errors", "ertacli.dist", "ertacli.progress", "ertacli.choices")),
    ("models", ("ertacli.backbones", "ertacli.engine", "ertacli.assets")),
    ("settings", ("ertacli.recipe", "ertacli.presets", "ertacli.plan", "ertacli.plan_check", "ertacli.plan_settings",
                  "ertacli.transfer", "ertacli.identity", "ertacli.limits", "ertacli.prompts")),
    ("evaluation", ("ertacli.evaluation",)),
    ("calibration", ("ertacli.calibration",)),
    ("api", ("ertacli.api",)),
    ("runs", ("ertacli.runs", "ertacli.export")),  # export writes files for other libraries, as run folders do
    ("commands", ("ertacli.commands", "ertacli.cli", "ertacli.cli_app", "ertacli.cli_options", "ertacli.cli_tools",
                  "ertacli.__main__")),
    ("tools", ("ertacli.tinytrain",)),
]


def layer_of(module: str, layers=LAYERS) -> int | None:
    """Index of the layer holding `module` (the longest matching package prefix; `ertacli` is the root itself)."""
    best, rank = -1, None
    for i, (_, members) in enumerate(layers):
        for m in members:
            if (module == m or ("." in m and module.startswith(m + "."))) and len(m) > best:
                best, rank = len(m), i
    return rank


def upward_imports(g: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """Every import of a module in a higher layer than the importer's, as 'a (layer) -> b (layer)'."""
    bad = []
    for a, deps in sorted(g.items()):
        for b in sorted(deps):
            la, lb = layer_of(a, layers), layer_of(b, layers)
            if la is not None and lb is not None and lb > la:
                bad.append(f"{a} ({layers[la][0]}) -> {b} ({layers[lb][0]})")
    return bad


def test_upward_import_finder_catches_the_old_ones():
    """The finder flags what the code had (evaluation -> api, a metric -> tinytrain, the library -> commands),
    passes downward and same-layer imports, and places submodules by their package."""
    old = {"ertacli.evaluation.runners": {"ertacli.api", "ertacli.engine.session"},
           "ertacli.evaluation.metrics": {"ertacli.tinytrain.classifier", "ertacli.evaluation.perceptual"},
           "ertacli.calibration.fit": {"ertacli.runs.job", "ertacli.plan"},
           "ertacli.commands.eval": {"ertacli.api", "ertacli.runs.job", "ertacli.evaluation.runners"}}
    assert upward_imports(old) == ["ertacli.calibration.fit (calibration) -> ertacli.runs.job (runs)",
                                   "ertacli.evaluation.metrics (evaluation) -> ertacli.tinytrain.classifier (tools)",
                                   "ertacli.evaluation.runners (evaluation) -> ertacli.api (api)"]
    assert layer_of("ertacli.cli_tools") == layer_of("ertacli.cli") and layer_of("ertacli.client") is None


def test_every_module_has_a_layer():
    missing = sorted(m for m in modules() if layer_of(m) is None)
    assert not missing, f"place these modules in LAYERS (tests/test_architecture.py): {missing}"


def test_layers_import_downward():
    """Each module imports only its own layer or lower ones (function-body imports included): the library never
    reaches the API, the run folders, the commands or the training tool."""
    names = [name for name, _ in LAYERS]
    assert names.index("evaluation") < names.index("api") < names.index("runs") < names.index("commands")
    assert names[-1] == "tools"
    bad = upward_imports(graph())
    assert not bad, bad


def test_import_ertacli_loads_no_torch():
    code = "import sys, ertacli; ertacli.Plan; import ertacli.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_public_api_names():
    import ertacli

    for name in ("load_plan", "Plan", "enable_cache", "disable_cache", "cached", "last_call_stats", "calibrate",
                 "PlanMismatch"):
        assert callable(getattr(ertacli, name)), name
