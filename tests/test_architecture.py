"""The tree reads as the architecture: no import cycle between modules or between packages (imports
inside functions included: they are deferred for start-up time, not to hide a cycle), modules of a
readable size, and ARCHITECTURE.md naming exactly the modules that exist."""

import ast
import re
from collections import defaultdict
from pathlib import Path

import recall_cli

PACKAGE_DIR = Path(recall_cli.__file__).parent
ROOT = PACKAGE_DIR.parent
MAX_LINES = 400
LONG_REASON = "longer than 400 lines"  # a module past MAX_LINES says why in its docstring, with these words


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imported_modules(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """recall_cli modules that `path` imports anywhere in its body (a submodule import counts as an
    import of the submodule; `from package import name` of a non-module name as the package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return {target for target in found if target in modules and target != name}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imported_modules(path, name, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of nodes, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def top_level(name: str) -> str:
    """The package (or top-level module) a module belongs to: recall_cli.index.scan -> index."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_find_cycle_sees_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_packages():
    packages: dict[str, set[str]] = defaultdict(set)
    for source, targets in import_graph().items():
        for target in targets:
            if top_level(source) != top_level(target) and "__main__" not in source:
                packages[top_level(source)].add(top_level(target))
    cycle = find_cycle(packages)
    assert cycle is None, "packages import each other: " + " -> ".join(cycle)


# The packages from the bottom up (ARCHITECTURE.md draws the same picture): each may import only from
# the layers below it, so lower layers stay usable, and testable, without the ones above.
LAYERS = (
    {"recall_cli", "errors", "paths", "modalities", "names", "profiling"},
    {"storage", "models"},
    {"early_exit"},
    {"index"},
    {"query"},
    {"watch"},
    {"cli"},
    {"__main__"},
)


def layer_of(package: str) -> int:
    return next(number for number, members in enumerate(LAYERS) if package in members)


def test_packages_import_only_from_the_layers_below():
    upward = sorted(
        {
            f"{top_level(source)} -> {top_level(target)}"
            for source, targets in import_graph().items()
            for target in targets
            if layer_of(top_level(source)) < layer_of(top_level(target))
        }
    )
    assert not upward, f"imports against the layering: {upward}"


def test_every_package_has_a_layer():
    assert {top_level(name) for name in all_modules()} <= set().union(*LAYERS)


def test_modules_stay_readable_or_say_why_not():
    too_long = []
    for name, path in all_modules().items():
        text = path.read_text()
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > MAX_LINES and LONG_REASON not in docstring.lower():
            too_long.append(f"{name} ({len(text.splitlines())} lines)")
    assert not too_long, f"over {MAX_LINES} lines without a reason at the top: {too_long}"


def test_architecture_md_names_exactly_the_modules_that_exist():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    every_file = {path.relative_to(PACKAGE_DIR).as_posix() for path in PACKAGE_DIR.rglob("*.py")}
    existing = {name for name in every_file if not name.endswith("__init__.py")}
    named = {name for name in re.findall(r"`([\w/]+\.py)`", text) if not name.startswith("tests/")}
    packages = {
        path.parent.relative_to(PACKAGE_DIR).as_posix() + "/"
        for path in PACKAGE_DIR.rglob("__init__.py")
        if path.parent != PACKAGE_DIR
    }
    assert existing - named == set(), "modules missing from ARCHITECTURE.md"
    assert named - every_file == set(), "ARCHITECTURE.md names modules that do not exist"
    assert {package for package in packages if f"`{package}`" not in text} == set(), "packages missing"


def test_comments_give_reasons_not_issue_numbers():
    cited = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in PACKAGE_DIR.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bissue ?#?\d+", line, re.IGNORECASE)
    ]
    assert not cited, f"cite the reason instead of the issue: {cited}"
