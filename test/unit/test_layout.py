"""
The package's shape: every module says what it owns, and imports inside the
package run one way, so a module can be read (and changed) without its callers.
"""

import ast
import pathlib

import kolibri_sync_extras_plugin

PACKAGE_DIR = pathlib.Path(kolibri_sync_extras_plugin.__file__).parent
PACKAGE = PACKAGE_DIR.name


def _module_name(path):
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _package_modules():
    return {
        _module_name(path): path
        for path in PACKAGE_DIR.rglob("*.py")
        if path.stat().st_size > 0
    }


def _imported_package_modules(name, path, modules):
    """Every module of the package that ``name`` imports, at any depth of its code."""
    is_package = path.name == "__init__.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [
                "{}.{}".format(target, alias.name) for alias in node.names
            ]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        imported.update(c for c in candidates if c in modules and c != name)
    return imported


def _find_cycle(graph):
    visiting, done = [], set()

    def visit(module):
        if module in visiting:
            return visiting[visiting.index(module) :] + [module]
        if module in done:
            return None
        visiting.append(module)
        for imported in sorted(graph[module]):
            cycle = visit(imported)
            if cycle:
                return cycle
        visiting.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_package_imports__every_module__no_import_cycle():
    modules = _package_modules()
    graph = {
        name: _imported_package_modules(name, path, modules)
        for name, path in modules.items()
    }

    assert _find_cycle(graph) is None


def test_package_imports__a_cycle__is_found():
    # the check above must be able to fail
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_package_modules__every_module__has_a_docstring_naming_its_concern():
    undocumented = [
        name
        for name, path in _package_modules().items()
        if name != PACKAGE
        and path.name != "__init__.py"
        and not ast.get_docstring(ast.parse(path.read_text()))
    ]

    assert undocumented == []


def _reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for imported in graph[todo.pop()]:
            if imported not in seen:
                seen.add(imported)
                todo.append(imported)
    return seen


#: What runs a stage in a job: the request side only holds a stage and enqueues.
JOB_RUN_PATH = frozenset(
    "{}.{}".format(PACKAGE, name)
    for name in (
        "tasks",
        "job.run",
        "job.controller",
        "job.progress",
    )
)


def test_request_side__imports__nothing_of_the_jobs_run_path():
    modules = _package_modules()
    graph = {
        name: _imported_package_modules(name, path, modules)
        for name, path in modules.items()
    }
    request_modules = [
        name for name in graph if name.startswith("{}.request.".format(PACKAGE))
    ]

    assert request_modules
    assert {
        name: sorted(_reachable(graph, name) & JOB_RUN_PATH) for name in request_modules
    } == {name: [] for name in request_modules}


def _writes_stage_status(path):
    """Whether the module UPDATEs or assigns a transfer session's stage status."""
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "update"
            and any(k.arg == "transfer_stage_status" for k in node.keywords)
        ):
            return True
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Attribute) and target.attr == "transfer_stage_status"
            for target in node.targets
        ):
            return True
    return False


def test_stage_status__written_by_one_module_only():
    writers = sorted(
        name for name, path in _package_modules().items() if _writes_stage_status(path)
    )

    assert writers == ["{}.stage_status".format(PACKAGE)]
