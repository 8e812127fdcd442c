"""The architecture, checked: dmdb's modules sit in stages, and imports only point down.

Data flows one way: training, then ingest, then tables, then fit, then weights,
then views. The modules are stacked in this order, lowest first; a module may
import from its own stage or an earlier one, never from a later one:

 1. foundation    version, errors, resources, codec (how masks, margins and timestamps are
                  stored), metrics, devices, datasets, ray_setup (Ray on loopback)
 2. schema        migrations
 3. store         db: the Database, its connections, transactions and reads
 4. catalog       catalog: find, list, record and evaluate fits
 5. ingest        runs, sources, ingest (the engine), writer
 6. training      trainers/*, training (collect), betons
 7. fitting       lasso_params, lasso_stats, lasso_reference, lasso_solvers, lasso, gram,
                  fit_memory, fitting, blocks (fits split by targets), pairs (second order)
 8. applications  applications, export, verify/*, imported fits, compare
 9. report        report
10. front         quickstart, cli, the package itself

The test reads every module's imports with ``ast`` (lazy imports inside
functions included) and fails on an upward import, a cycle, a private name
imported from another module, or a ``db`` that imports more than the foundation
and the schema.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dmdb"

STAGES: list[tuple[str, list[str]]] = [
    ("foundation", ["version", "errors", "resources", "codec", "metrics", "devices",
                    "datasets", "ray_setup"]),
    ("schema", ["migrations"]),
    ("store", ["db"]),
    ("catalog", ["catalog"]),
    ("ingest", ["runs", "sources", "ingest", "writer", "spec", "shards"]),
    ("training", ["trainers", "training", "collect", "betons", "cluster"]),
    ("fitting", ["lasso_params", "lasso_stats", "lasso_reference", "lasso_solvers", "lasso",
                 "fitting", "gram", "fit_memory", "blocks", "pairs"]),
    ("applications", ["applications", "export", "verify", "imported", "import_fit",
                      "compare"]),
    ("report", ["report"]),
    ("front", ["quickstart", "cli", "__init__"]),
]

# db.py may import only these of ours (the issue that set up the layers says so).
DB_ALLOWED = {"codec", "errors", "migrations"}

# The one upward call, by design: Database.ingest is public API that notebooks and
# the README use (`db.ingest(table)`), kept as a two-line delegate to the ingest engine.
ALLOWED_UPWARD = {("db", "ingest")}


def _top(module: str) -> str:
    """'dmdb.verify.plan' -> 'verify'; 'dmdb' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _stage_of(top: str) -> int:
    for i, (_, names) in enumerate(STAGES):
        if top in names:
            return i
    raise AssertionError(f"module dmdb.{top} has no stage: add it to STAGES in {__file__}")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported dmdb module, names taken from it, line) for every import in a file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("dmdb")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "dmdb" or target.startswith("dmdb."):
                names = [a.name for a in node.names]
                if target == "dmdb":  # `from dmdb import migrations` imports a module
                    found += [(f"dmdb.{n}", [], node.lineno) for n in names if n != "__version__"]
                    if "__version__" in names:
                        found.append(("dmdb", [], node.lineno))
                else:
                    found.append((target, names, node.lineno))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))
GRAPH = {p: _imports(p) for p in MODULES}


def test_every_module_has_a_stage() -> None:
    for path in MODULES:
        _stage_of(_top(_module_name(path)))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_point_down(path: Path) -> None:
    me = _top(_module_name(path))
    for target, _, line in GRAPH[path]:
        other = _top(target)
        if other == me or (me, other) in ALLOWED_UPWARD:
            continue
        assert _stage_of(other) <= _stage_of(me), (
            f"{_module_name(path)}:{line} imports {target} from stage "
            f"{STAGES[_stage_of(other)][0]!r}, later than its own {STAGES[_stage_of(me)][0]!r}"
        )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_no_private_name_crosses_modules(path: Path) -> None:
    me = _module_name(path)
    for target, names, line in GRAPH[path]:
        if target == me:
            continue
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{me}:{line} imports private {private} from {target}"


def test_db_imports_only_the_foundation() -> None:
    path = PACKAGE / "db.py"
    ours = {_top(t) for t, _, _ in GRAPH[path]} - {"db"}
    extra = ours - DB_ALLOWED - {other for me, other in ALLOWED_UPWARD if me == "db"}
    assert not extra, f"db.py imports {sorted(extra)}; it may import only {sorted(DB_ALLOWED)}"


def test_no_cycles() -> None:
    edges: dict[str, set[str]] = {}
    for path in MODULES:
        me = _module_name(path)
        edges.setdefault(me, set())
        for target, _, _ in GRAPH[path]:
            if (_top(me), _top(target)) in ALLOWED_UPWARD:
                continue  # a lazy call up, by design; not an import-time edge
            # `from dmdb.x import y` may name a submodule y of package x
            edges[me].add(target)
    known = set(edges)
    for me in edges:
        edges[me] = {t for t in edges[me] if t in known and t != me}
    # A package's __init__ re-exporting its own submodules is not a cycle.
    for me in edges:
        edges[me] = {t for t in edges[me] if not (t.startswith(me + ".") and me != "dmdb")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_commands_that_only_read_a_fit_do_not_import_torch() -> None:
    """`dmdb fits`, `leakage`, `export` and `embed` resolve a fit without the solver."""
    import subprocess
    import sys

    code = (
        "import sys, dmdb.cli, dmdb.catalog, dmdb.applications, dmdb.export; "
        "print(sorted(m for m in ('torch', 'dmdb.fitting', 'dmdb.lasso') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
