"""The package layout stays what llada_jax/__init__.py says: each stage imports only the stages below it,
no module imports another in a cycle, and functions stay short enough to read (read from the source with ast,
so a lazy import inside a function counts as much as one at the top)."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "llada_jax"

# stage -> rank: a module may import its own stage or a stage of lower rank, never one of equal or higher rank
RANKS = {
    "config": 0,
    "sharding": 1, "utils": 1,
    "data": 2, "models": 2,
    "objectives": 3, "checkpoints": 3,
    "training": 4,
    "inference": 5, "interop": 5, "scaling": 5,
    "eval": 6,
    "cli": 7,
}
MAX_FUNCTION_LINES = 60


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path, known: set[str]) -> set[str]:
    """llada_jax modules a file imports anywhere in it (`from pkg import module` resolves to the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("llada_jax"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llada_jax"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return {m for m in found if m != "llada_jax"}


def stage(module: str) -> str:
    return module.split(".")[1]


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(files)) for name, path in files.items()}


def test_every_stage_has_a_rank_and_a_docstring_saying_what_it_does():
    stages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    stages |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert stages == set(RANKS), "a new top-level module or package needs a place in RANKS (and in the README)"
    for name in stages:
        init = PACKAGE / name / "__init__.py"
        if init.exists():
            assert ast.get_docstring(ast.parse(init.read_text())), f"llada_jax/{name}/__init__.py has no docstring"


def test_no_stage_imports_a_later_or_sibling_stage():
    wrong = sorted(f"{m} imports {dep}" for m, deps in graph().items() if m != "llada_jax" for dep in deps
                   if stage(dep) != stage(m) and RANKS[stage(dep)] >= RANKS[stage(m)])
    assert not wrong, "imports against the stage order:\n" + "\n".join(wrong)


def test_no_import_cycles_between_modules():
    edges = graph()
    state, cycles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(trail[trail.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The rank check is not vacuous: a models module importing training is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from llada_jax.training import loop\n")
    assert imported_modules(bad, {"llada_jax.training.loop"}) == {"llada_jax.training.loop"}
    assert RANKS[stage("llada_jax.training.loop")] >= RANKS[stage("llada_jax.models.registry")]


def test_functions_are_short():
    long = [f"{path.relative_to(PACKAGE)}: {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted(PACKAGE.rglob("*.py")) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "split into named helpers:\n" + "\n".join(long)
