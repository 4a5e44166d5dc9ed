"""The package's import rules, enforced on its source (docs/architecture.md explains them).

An AST walk over every module of ``primus_lens_inject`` collects each import, at module level and
inside functions alike (a function-level import is still a dependency, only a later one), relative
and absolute, and checks it against the layers:

- leaves (the top-level modules: config, log, topology, values, guard, credentials, httpbody,
  state, paths, ...) import the standard library, third-party packages and other leaves only;
- ``metrics`` and ``report`` import leaves (and their own modules), not each other, not capture;
- ``capture`` wires leaves, metrics and report together;
- inside ``report``, the sinks are peers: ``report.lens`` and ``report.otlp`` never import each
  other (both use the shared ``report`` modules; ``report.sinks`` builds them);
- ``k8s`` and ``devserver`` are products of their own: the standard library and ``httpbody`` only;
- ``cli`` (and ``__main__``) may import anything.

From outside a package only its face is imported (its ``__init__``, or a nested package's), and
only the names its ``__all__`` declares; every package's ``__init__`` has a docstring and an
``__all__`` (``cli`` and ``__main__`` are exempt from the faces, as from the layers).

No import cycle may exist among the modules, whatever the layers.  The bootstrap
(``sitecustomize/sitecustomize.py``) runs in every Python process of a pod, so it may import the
package only from inside the wandb hook and the rank pulse's start (after ``init_process_group``).
Every violation is listed in the failure message.
The map of all this, ``docs/architecture.md``, is checked to name only modules that exist.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
import sysconfig
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "primus_lens_inject"
BOOTSTRAP = ROOT / "sitecustomize" / "sitecustomize.py"
# the only functions of the bootstrap that may import the package: the wandb hook, the pulse start
BOOTSTRAP_HOOKS = {"_patch_wandb", "_start_pulse"}

# layer -> the layers it may import (besides itself); None: anything.
ALLOWED: Dict[str, Optional[Set[str]]] = {
    "leaf": {"leaf"},
    "metrics": {"leaf"},
    "report": {"leaf"},
    "capture": {"leaf", "metrics", "report", "pulse"},
    "pulse": {"leaf", "metrics"},  # the rank pulse: every rank's steps, figures and stalls
    "agent": {"leaf", "report"},  # the pod agent: sends every record, serves /metrics
    "view": {"leaf", "report"},  # primus-lens report: the HTML page of records and pulses
    "k8s": set(),
    "devserver": set(),
    "cli": None,
    "entry": None,  # __main__: python -m primus_lens_inject
}
STDLIB_ONLY = {"k8s", "devserver"}
# Leaves the two servers share: stdlib-only themselves, importing nothing of the package.
SHARED = {f"{PACKAGE}.httpbody"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> Dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    return {_module_name(path): path for path in sorted((ROOT / PACKAGE).rglob("*.py"))}


def layer(module: str) -> str:
    """The layer of a module: its subpackage, or ``leaf`` for a top-level module."""
    parts = module.split(".")
    if len(parts) == 1:
        return "leaf"  # the package's __init__: its version
    if parts[1] == "__main__":
        return "entry"
    if len(parts) == 2 and not (ROOT / PACKAGE / parts[1]).is_dir():
        return "leaf"
    return parts[1]


# Peers inside a layer that must not know each other: a sink never imports another sink.
PEERS = (f"{PACKAGE}.report.lens", f"{PACKAGE}.report.otlp")


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def may_import(module: str, target: str) -> bool:
    """Whether the layers let ``module`` import the package module ``target``."""
    if any(_within(module, a) and _within(target, b) for a in PEERS for b in PEERS if a != b):
        return False
    if module in SHARED:
        return False
    if target in SHARED:
        return True  # stdlib-only leaves: every layer may use them
    source_layer, target_layer = layer(module), layer(target)
    allowed = ALLOWED.get(source_layer, set())  # a new subpackage gets a rule before it imports
    return allowed is None or target_layer == source_layer or target_layer in allowed


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[Tuple[int, str]]:
    """(line, absolute dotted name) of every import anywhere in the tree; ``from X import y``
    yields ``X.y`` (resolved to ``X`` later when ``y`` is not a module)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                yield node.lineno, f"{prefix}.{alias.name}" if alias.name != "*" else prefix


def _target(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """The package module an imported name lives in (the longest prefix that is a module)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _is_stdlib(top: str) -> bool:
    names = getattr(sys, "stdlib_module_names", None)  # Python 3.10+
    if names is not None:
        return top in names
    spec = importlib.util.find_spec(top)
    if spec is None:
        return False
    origin = spec.origin or ""
    stdlib = sysconfig.get_paths()["stdlib"]
    return origin in ("built-in", "frozen") or (origin.startswith(stdlib)
                                                and "site-packages" not in origin)


def import_graph() -> Tuple[Dict[str, Set[str]], List[str]]:
    """The package's import graph and the layer violations found while building it."""
    modules = package_modules()
    graph: Dict[str, Set[str]] = {name: set() for name in modules}
    violations: List[str] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        source_layer = layer(module)
        if source_layer not in ALLOWED:
            violations.append(f"{path.relative_to(ROOT)}: subpackage {source_layer} has no rule "
                              "in tests/test_architecture.py (ALLOWED) or docs/architecture.md")
        stdlib_only = source_layer in STDLIB_ONLY or module in SHARED
        for line, name in _imports(tree, module, _is_package(path)):
            where = f"{path.relative_to(ROOT)}:{line}"
            if name.split(".")[0] != PACKAGE:
                top = name.split(".")[0]
                if stdlib_only and top != "__future__" and not _is_stdlib(top):
                    violations.append(f"{where}: {module} ({source_layer}) imports {top}, "
                                      "which is not in the standard library")
                continue
            target = _target(name, modules)
            if target is None:
                violations.append(f"{where}: {module} imports {name}, which does not exist")
                continue
            if target != module:
                graph[module].add(target)
            if not may_import(module, target):
                violations.append(f"{where}: {module} ({source_layer}) imports {target} "
                                  f"({layer(target)})")
    return graph, violations


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_layers_are_respected() -> None:
    _, violations = import_graph()
    assert not violations, "imports that break the layers:\n" + "\n".join(violations)


def test_no_import_cycle() -> None:
    graph, _ = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(cycle) for cycle in found)


def faces() -> Dict[str, Set[str]]:
    """Every subpackage's face: the names its ``__init__`` lists in ``__all__``, by package."""
    out = {}
    for name, path in package_modules().items():
        if _is_package(path) and name != PACKAGE:
            tree = ast.parse(path.read_text(encoding="utf-8"))
            out[name] = {element.value for node in tree.body if isinstance(node, ast.Assign)
                         and any(isinstance(t, ast.Name) and t.id == "__all__"
                                 for t in node.targets)
                         for element in getattr(node.value, "elts", ())
                         if isinstance(element, ast.Constant)}
    return out


def face_violation(module: str, name: str, target: str, declared: Dict[str, Set[str]]) -> str:
    """Why importing ``name`` (found in ``target``) from ``module`` bypasses a face, or "".

    From outside a subpackage, only a face may be imported (the subpackage's ``__init__``, or a
    nested package's, itself a face), and from a face only what its ``__all__`` declares.  The
    commands (``cli``, ``__main__``) are exempt: they wire everything, lazily where start-up
    matters."""
    if layer(module) in ("cli", "entry"):
        return ""
    parts = target.split(".")
    for end in range(2, len(parts) + 1):
        package = ".".join(parts[:end])
        if package not in declared:
            break  # a plain module of a package the importer is inside
        if module != package and not module.startswith(package + "."):
            if target not in declared:
                return f"imports {target}, inside {package}: import its face instead"
            attribute = name[len(target) + 1:].split(".")[0]
            if attribute and f"{target}.{attribute}" not in declared \
                    and attribute not in declared[target]:
                return f"imports {attribute} from {target}, which its __all__ does not declare"
            return ""
    return ""


def test_imports_go_through_package_faces() -> None:
    declared = faces()
    modules = package_modules()
    violations = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, name in _imports(tree, module, _is_package(path)):
            target = _target(name, modules) if name.startswith(PACKAGE + ".") else None
            why = face_violation(module, name, target, declared) if target else ""
            if why:
                violations.append(f"{path.relative_to(ROOT)}:{line}: {module} {why}")
    assert not violations, "imports that bypass a package's face:\n" + "\n".join(violations)


def test_each_package_declares_its_face() -> None:
    """A subpackage's ``__init__`` says what it is for (a docstring) and what other layers may use
    (``__all__``, every name of which it defines or imports)."""
    missing = []
    for package, names in faces().items():
        module = importlib.import_module(package)
        if not (module.__doc__ or "").strip():
            missing.append(f"{package}: no docstring")
        if not hasattr(module, "__all__"):
            missing.append(f"{package}: no __all__")
        missing += [f"{package}: __all__ names {name}, which it lacks" for name in sorted(names)
                    if not hasattr(module, name)]
    assert missing == [], "package faces:\n" + "\n".join(missing)


def test_bootstrap_imports_the_package_only_in_the_wandb_hook() -> None:
    tree = ast.parse(BOOTSTRAP.read_text(encoding="utf-8"))
    offending = []

    def visit(node: ast.AST, function: Optional[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name if function is None else function)
                continue
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                names = [child.module or ""] if not child.level else [PACKAGE]
            else:
                names = []
            if any(name.split(".")[0] == PACKAGE for name in names) \
                    and function not in BOOTSTRAP_HOOKS:
                offending.append(f"line {child.lineno} in {function or 'module level'}")
            visit(child, function)

    visit(tree, None)
    assert offending == [], "the bootstrap imports the package outside the wandb hook: " + \
        ", ".join(offending)


def test_the_architecture_page_names_what_exists() -> None:
    """docs/architecture.md stays true across renames: every ``capture.record.Call``-style name
    it mentions is a module of the package, or a name defined in one."""
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    layers = "|".join(sorted({layer(name) for name in package_modules()} - {"leaf", "entry"}))
    leaves = "|".join(name.split(".")[1] for name in package_modules() if layer(name) == "leaf"
                      and name != PACKAGE)
    pattern = re.compile(rf"`((?:{layers}|{leaves})\.[A-Za-z_][\w.]*)")
    modules = package_modules()
    missing = []
    for dotted in sorted(set(pattern.findall(page))):
        module = _target(f"{PACKAGE}.{dotted}", modules)
        value: object = importlib.import_module(module) if module else None
        for attribute in f"{PACKAGE}.{dotted}"[len(module or ""):].split(".")[1:]:
            value = getattr(value, attribute, None)
        if value is None:
            missing.append(dotted)
    assert missing == [], f"docs/architecture.md names what does not exist: {missing}"


def test_the_walk_sees_function_level_and_relative_imports() -> None:
    """The checker itself: a function-level relative import is an edge like any other."""
    source = "from . import a\n\ndef f():\n    from ..b import c\n    import primus_lens_inject.d\n"
    found = [name for _, name in _imports(ast.parse(source), f"{PACKAGE}.sub.mod", False)]
    assert found == [f"{PACKAGE}.sub.a", f"{PACKAGE}.b.c", f"{PACKAGE}.d"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert not may_import(f"{PACKAGE}.k8s.admission", f"{PACKAGE}.config")
    assert may_import(f"{PACKAGE}.k8s.webhook", f"{PACKAGE}.httpbody")
    assert not may_import(f"{PACKAGE}.report.reporter", f"{PACKAGE}.metrics.sampler")
    assert not may_import(f"{PACKAGE}.config", f"{PACKAGE}.capture.session")
    assert may_import(f"{PACKAGE}.capture.session", f"{PACKAGE}.report.reporter")
    assert not may_import(f"{PACKAGE}.report.lens.sink", f"{PACKAGE}.report.otlp.encoding")
    assert not may_import(f"{PACKAGE}.report.otlp.sink", f"{PACKAGE}.report.lens")
    assert may_import(f"{PACKAGE}.report.otlp.sink", f"{PACKAGE}.report.sink")
    declared = {f"{PACKAGE}.metrics": {"Sampler"}, f"{PACKAGE}.metrics.gpu": {"inventory"}}
    session, gpu = f"{PACKAGE}.capture.session", f"{PACKAGE}.metrics.gpu"
    assert face_violation(session, f"{gpu}.inventory", gpu, declared) == ""
    assert face_violation(session, f"{PACKAGE}.metrics.Sampler", f"{PACKAGE}.metrics", declared) == ""
    assert "face" in face_violation(session, f"{gpu}.source.GpuSource", f"{gpu}.source", declared)
    assert "__all__" in face_violation(session, f"{gpu}.choose", gpu, declared)
    assert face_violation(f"{PACKAGE}.metrics.sampler", f"{gpu}.choose", gpu, declared) != ""
    assert face_violation(f"{gpu}.source", f"{gpu}.choose.choose", f"{gpu}.choose", declared) == ""
    assert face_violation(f"{PACKAGE}.cli.doctor", f"{gpu}.choose", f"{gpu}.choose", declared) == ""
