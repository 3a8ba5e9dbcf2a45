"""Layer rules: the import graph of the source, read with `ast`, against the table in docs/architecture.md.

The table under "## Who may import whom" says which layer may import which. Every `import` and
`from ... import` statement counts, wherever it stands (module level, inside a function, under an `if`
or `try`, under `if TYPE_CHECKING:`); relative imports are resolved against the module's package.
Sources read: host/semifl (layers by package or module name), models/ (`semifl.models`),
firmware/pi/semifl_agent (`semifl_agent`) and firmware/micropython (`semifl_node`).

Only the standard library is used; nothing here imports the project.
"""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = Path("docs") / "architecture.md"
HEADING = "## Who may import whom"
EVERY_LAYER_ABOVE = "every layer above"

# (folder relative to the repository root, module-name prefix, layer of every file there or None = by module name)
SOURCES = (
    ("host/semifl", "semifl", None),
    ("models", "semifl.models", "semifl.models"),
    ("firmware/pi/semifl_agent", "semifl_agent", "semifl_agent"),
    ("firmware/micropython", "", "semifl_node"),
)
HOST_ROOT = "semifl"  # host/semifl/__init__.py: the root package, in no layer
FIRMWARE = ("semifl_agent", "semifl_node")  # nothing in the host imports these

# The MicroPython node: protocol modules are copied flat onto a board, the link simulator sits next to the
# node for the unix port, umqtt lives in lib/. Everything else it imports must be a builtin or the stdlib.
NODE = "semifl_node"
NODE_FLAT = {"wire": "semifl.protocol", "sampling": "semifl.protocol", "report": "semifl.protocol"}
NODE_ALWAYS = {"link", "umqtt", "semifl_node"}
MICROPYTHON_BUILTINS = {
    "machine", "network", "gc", "micropython", "uos", "ubinascii", "utime", "ustruct", "usocket", "ujson",
    "uselect", "uhashlib", "uerrno", "uarray", "ucollections", "uio", "ure", "uzlib", "urandom", "uasyncio",
    "ussl", "ucryptolib", "cryptolib", "uctypes", "ubluetooth", "bluetooth", "btree", "framebuf", "neopixel",
    "onewire", "dht", "esp", "esp32", "rp2", "pyb", "vfs", "deflate", "uplatform",
}
STDLIB = set(getattr(sys, "stdlib_module_names", ())) | {"__future__"}

# Heavy third-party packages, allowed only in these layers.
ONLY_IN = {
    "tensorflow": ("semifl.models",),
    "torch": ("semifl.learn", "semifl.device", "semifl_agent"),
}


# ---------------------------------------------------------------------------------------------- the table

_SPAN = re.compile(r"`([^`]+)`")


def _cells(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|"):
        s = s[:-1]
    return [c.strip() for c in s.split("|")]


def parse_table(markdown: str) -> dict[str, set[str]]:
    """The rows of the table under HEADING: layer -> layers it may import (in table order).

    `may import` is read as the code spans in it that name layers (prose and other spans are skipped);
    `—` (or `-`, or empty) is none; "every layer above" is every other layer except the firmware trees.
    A span that looks like a layer (`semifl.x`, `semifl_x`) but is not one is an error (a typo)."""
    lines = markdown.splitlines()
    try:
        start = next(i for i, l in enumerate(lines) if l.strip() == HEADING)
    except StopIteration:
        raise ValueError(f"no heading {HEADING!r}") from None
    rows: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.startswith("## ") or line.startswith("# "):
            break
        if line.lstrip().startswith("|"):
            rows.append(_cells(line))
        elif rows:
            break  # the first table only
    if len(rows) < 2 or [c.lower() for c in rows[0][:3]] != ["layer", "what", "may import"]:
        raise ValueError(f"under {HEADING!r} expected a table `| layer | what | may import |`, got {rows[:1]}")
    body = [r for r in rows[1:] if not all(set(c) <= set(":- ") for c in r)]
    order: list[str] = []
    raw: dict[str, str] = {}
    for r in body:
        if len(r) < 3:
            raise ValueError(f"row with fewer than 3 cells: {r}")
        spans = _SPAN.findall(r[0])
        if len(spans) != 1:
            raise ValueError(f"layer cell must be one code span: {r[0]!r}")
        layer = spans[0].strip()
        if layer in raw:
            raise ValueError(f"layer {layer} listed twice")
        order.append(layer)
        raw[layer] = r[2]
    rules: dict[str, set[str]] = {}
    for layer in order:
        cell = raw[layer]
        if EVERY_LAYER_ABOVE in cell.lower():
            rules[layer] = {l for l in order if l != layer and l not in FIRMWARE}
            continue
        allowed = set()
        for span in _SPAN.findall(cell):
            name = span.strip()
            if name in raw:
                allowed.add(name)
            elif re.fullmatch(r"semifl[._][\w.]*", name):
                raise ValueError(f"row {layer}: {name} is not a layer in the table")
        allowed.discard(layer)
        rules[layer] = allowed
    return rules


def load_rules(root: Path = ROOT) -> dict[str, set[str]]:
    return parse_table((root / DOC).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- the source


@dataclass
class Import:
    file: str  # path relative to the root
    line: int
    text: str  # the statement as written (ast.unparse)
    name: str  # absolute dotted name imported: `from a import b` gives `a.b`, `import a.b` gives `a.b`
    lazy: bool  # inside a function

    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"

    def __repr__(self) -> str:
        return f"<{self.file}:{self.line} {self.name}>"


@dataclass
class Source:
    path: Path
    rel: str
    module: str
    is_package: bool
    layer: str | None
    tree: str  # the SOURCES folder it came from
    imports: list[Import] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<{self.rel} {self.module} in {self.layer}>"


def module_name(tree: str, prefix: str, rel: Path) -> tuple[str, bool]:
    """Dotted module name of file `rel` (relative to its SOURCES folder) and whether it is a package."""
    parts = list(rel.with_suffix("").parts)
    if tree == "firmware/micropython" and parts and parts[0] == "lib":
        parts = parts[1:]  # lib/ is on the board's sys.path
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    name = ".".join(([prefix] if prefix else []) + parts)
    return name, is_package


def layer_of(name: str, layers) -> str | None:
    """The layer a dotted name belongs to: the longest layer that is the name or a package above it."""
    best = None
    for layer in layers:
        if (name == layer or name.startswith(layer + ".")) and (best is None or len(layer) > len(best)):
            best = layer
    return best


def _resolve_base(module: str, is_package: bool, level: int, what: str | None) -> str:
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".") if package else []
    if level - 1 >= len(parts):
        raise ValueError(f"relative import beyond the top package in {module}")
    base = parts[: len(parts) - (level - 1)]
    if what:
        base.append(what)
    return ".".join(base)


def read_imports(path: Path, rel: str, module: str, is_package: bool) -> list[Import]:
    """Every import statement in the file, anywhere in it, as absolute dotted names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    out.append(Import(rel, child.lineno, ast.unparse(child), alias.name, lazy))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = _resolve_base(module, is_package, child.level, child.module)
                else:
                    base = child.module or ""
                for alias in child.names:
                    name = base if alias.name == "*" else (f"{base}.{alias.name}" if base else alias.name)
                    out.append(Import(rel, child.lineno, ast.unparse(child), name, lazy))
            visit(child, inner)

    visit(tree, False)
    return out


def scan(root: Path, layers, sources=SOURCES) -> tuple[dict[str, Source], list[str]]:
    """All Python files of the SOURCES folders under root: module name -> Source; and the files that
    could not be read (a syntax error, a relative import that goes nowhere)."""
    found: dict[str, Source] = {}
    problems: list[str] = []
    for tree, prefix, fixed in sources:
        folder = root / tree
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(root).as_posix()
            module, is_package = module_name(tree, prefix, path.relative_to(folder))
            layer = fixed if fixed is not None else layer_of(module, layers)
            src = Source(path, rel, module, is_package, layer, tree)
            try:
                src.imports = read_imports(path, rel, module, is_package)
            except (SyntaxError, ValueError, UnicodeDecodeError) as e:
                problems.append(f"{rel}: cannot read its imports: {e}")
            if module in found:
                problems.append(f"{rel}: module {module} also in {found[module].rel}")
            found[module] = src
    return found, problems


def resolve_module(name: str, modules) -> str | None:
    """The most specific scanned module a dotted name loads (`a.b.attr` -> `a.b`), or None."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        cand = ".".join(parts[:n])
        if cand in modules:
            return cand
    return None


# ---------------------------------------------------------------------------------------------- the checks


def target_layer(imp: Import, src: Source, rules, modules) -> tuple[str | None, str | None]:
    """(layer the import reaches or None, a reason it is forbidden regardless of the table or None)."""
    name = imp.name
    top = name.split(".")[0]
    if src.layer == NODE:
        if top in NODE_FLAT:
            return NODE_FLAT[top], None
        if top in NODE_ALWAYS or top in MICROPYTHON_BUILTINS or top in STDLIB:
            return (NODE if top == NODE else None), None
        if top != HOST_ROOT and top not in FIRMWARE:
            return None, f"{NODE} -> {top} not allowed: not on a board (only builtins, stdlib, umqtt, link, protocol)"
    layer = layer_of(name, rules)
    if layer is not None:
        if layer in FIRMWARE and src.layer not in FIRMWARE:
            return layer, f"{src.layer} -> {layer} not allowed: nothing in the host imports the firmware trees"
        return layer, None
    if top == HOST_ROOT:
        known = resolve_module(name, modules)
        if name == HOST_ROOT or (known == HOST_ROOT and name.split(".")[1].startswith("_")):
            return None, None  # the root package itself (`semifl`, `semifl.__version__`)
        if known and known != HOST_ROOT:
            return None, f"{src.layer} -> {known} not allowed: {known} is in no layer of the table"
        return None, f"{src.layer} -> {name} not allowed: no such layer or module"
    if top in ONLY_IN and src.layer not in ONLY_IN[top]:
        return None, f"{src.layer} -> {top} not allowed: {top} only in {', '.join(ONLY_IN[top])}"
    return None, None


def violations(modules: dict[str, Source], rules) -> list[str]:
    """Every import that breaks the table (or an always-rule), as `file:line: import ... (A -> B not allowed)`."""
    out = []
    for src in modules.values():
        if src.layer is None:
            continue  # the root package, or a file in no layer (test_every_file_has_a_layer says so)
        for imp in src.imports:
            layer, reason = target_layer(imp, src, rules, modules)
            if reason:
                out.append(f"{imp.where()} ({reason})")
            elif layer is not None and layer != src.layer and layer not in rules.get(src.layer, ()):
                out.append(f"{imp.where()} ({src.layer} -> {layer} not allowed)")
    return sorted(set(out), key=_file_line_key)


def _file_line_key(s: str):
    f, _, rest = s.partition(":")
    line = rest.partition(":")[0]
    return (f, int(line) if line.isdigit() else 0, s)


def layer_graph(modules, rules) -> dict[str, dict[str, list[Import]]]:
    """layer -> layer -> the imports that make that edge (allowed or not)."""
    g: dict[str, dict[str, list[Import]]] = {}
    for src in modules.values():
        if src.layer is None:
            continue
        for imp in src.imports:
            layer, _ = target_layer(imp, src, rules, modules)
            if layer is not None and layer != src.layer:
                g.setdefault(src.layer, {}).setdefault(layer, []).append(imp)
    return g


def module_graph(modules) -> dict[str, dict[str, list[Import]]]:
    """module -> scanned module -> the imports that make that edge (every import, lazy ones too).
    `from a import b` is an edge to `a.b` when that is a module, else to `a`; a package's own
    `__init__` above an imported module is not counted as an edge."""
    g: dict[str, dict[str, list[Import]]] = {}
    for src in modules.values():
        for imp in src.imports:
            dst = resolve_module(imp.name, modules)
            if dst is not None and dst != src.module:
                g.setdefault(src.module, {}).setdefault(dst, []).append(imp)
    return g


def strongly_connected(graph) -> list[list[str]]:
    """Tarjan's components with more than one node (iterative)."""
    nodes = set(graph) | {d for e in graph.values() for d in e}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    comps: list[list[str]] = []
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, {})))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        comps.append(sorted(comp))
    return sorted(comps)


def _shortest_cycle(graph, start: str, inside: set[str]) -> list[str] | None:
    prev = {start: None}
    queue = [start]
    while queue:
        nxt = []
        for v in queue:
            for w in sorted(graph.get(v, {})):
                if w not in inside:
                    continue
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return [start] + path[::-1][1:] + [start] if path[-1] == start else None
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        queue = nxt
    return None


def cycles(graph) -> list[list[str]]:
    """For every circle (strongly connected component), the shortest cycle through each of its nodes,
    without repeats: [a, b, ..., a]."""
    out: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for comp in strongly_connected(graph):
        inside = set(comp)
        for v in comp:
            c = _shortest_cycle(graph, v, inside)
            if not c:
                continue
            body = c[:-1]
            i = body.index(min(body))
            key = tuple(body[i:] + body[:i])
            if key not in seen:
                seen.add(key)
                out.append(list(key) + [key[0]])
    return out


def describe_cycles(graph, found: list[list[str]]) -> str:
    lines = []
    for c in found:
        lines.append(" -> ".join(c))
        for a, b in zip(c, c[1:]):
            for where in dict.fromkeys(imp.where() for imp in graph.get(a, {}).get(b, [])):
                lines.append(f"    {where} ({a} -> {b})")
    return "\n".join(lines)


def coverage_problems(modules: dict[str, Source], rules) -> list[str]:
    out = []
    for src in modules.values():
        if src.module == HOST_ROOT:
            continue
        if src.layer is None:
            out.append(f"{src.rel}: module {src.module} is in no layer of the table ({DOC.as_posix()})")
        elif src.layer not in rules:
            out.append(f"{src.rel}: layer {src.layer} is not in the table ({DOC.as_posix()})")
    return sorted(out)


# ---------------------------------------------------------------------------------------------- the real tree


@pytest.fixture(scope="module")
def rules():
    try:
        return load_rules(ROOT)
    except (OSError, ValueError) as e:
        pytest.fail(f"{DOC.as_posix()}: {e}")


@pytest.fixture(scope="module")
def tree(rules):
    assert (ROOT / "host" / "semifl").is_dir()
    return scan(ROOT, rules)


def test_imports_follow_the_table(rules, tree):
    modules, _ = tree
    bad = violations(modules, rules)
    assert not bad, f"{len(bad)} import(s) break the layer table in {DOC.as_posix()}:\n" + "\n".join(bad)


def test_table_has_no_circle(rules):
    graph = {a: {b: [] for b in bs} for a, bs in rules.items()}
    found = cycles(graph)
    assert not found, f"the table in {DOC.as_posix()} has circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_layer_graph_has_no_circle(rules, tree):
    modules, _ = tree
    graph = layer_graph(modules, rules)
    found = cycles(graph)
    assert not found, "the layers import each other in a circle:\n" + describe_cycles(graph, found)


def test_no_module_import_cycle(tree):
    modules, _ = tree
    graph = module_graph(modules)
    found = cycles(graph)
    assert not found, (f"{len(found)} module import circle(s) (every import counts, inside functions too):\n"
                       + describe_cycles(graph, found))


def test_every_file_has_a_layer(rules, tree):
    modules, problems = tree
    bad = problems + coverage_problems(modules, rules)
    assert not bad, "source files outside the layer table or unreadable:\n" + "\n".join(bad)


# ---------------------------------------------------------------------------------------------- the checker itself

SYNTHETIC_DOC = """# Architecture

Some prose with a `semifl.table` span that is not the table.

## Who may import whom

| layer | what | may import |
|---|---|---|
| `semifl.alpha` | the bottom | — |
| `semifl.beta` | on top of `alpha` | `semifl.alpha` (and prose `wire`) |
| `semifl.cli` | the command | every layer above |
| `semifl_node` | a node | `semifl.alpha` |

## Next section

| layer | what | may import |
|---|---|---|
| `semifl.ignored` | not read | — |
"""


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")


def test_checker_on_a_synthetic_tree(tmp_path):
    _write(tmp_path, "docs/architecture.md", SYNTHETIC_DOC)
    _write(tmp_path, "host/semifl/__init__.py", "")
    _write(tmp_path, "host/semifl/alpha/__init__.py", "")
    _write(tmp_path, "host/semifl/alpha/core.py",
           "import os\n"
           "\n"
           "def late():\n"
           "    if os.environ:\n"
           "        from semifl.beta import use  # forbidden: alpha may import nothing\n"
           "    return use\n")
    _write(tmp_path, "host/semifl/beta/__init__.py", "")
    _write(tmp_path, "host/semifl/beta/use.py",
           "from ..alpha import core\n"
           "from . import helper\n")
    _write(tmp_path, "host/semifl/beta/helper.py", "X = 1\n")
    _write(tmp_path, "host/semifl/cli.py", "import semifl.beta.use\nfrom semifl import alpha\n")
    _write(tmp_path, "host/semifl/stray.py", "")
    _write(tmp_path, "firmware/micropython/main.py",
           "import machine, gc\nimport wire\nfrom link import SimRadio\nimport numpy\n")

    rules = load_rules(tmp_path)
    assert rules == {
        "semifl.alpha": set(),
        "semifl.beta": {"semifl.alpha"},
        "semifl.cli": {"semifl.alpha", "semifl.beta"},
        "semifl_node": {"semifl.alpha"},
    }
    modules, problems = scan(tmp_path, rules)
    assert problems == []

    # the relative imports resolve against the package
    use = modules["semifl.beta.use"]
    assert [(i.line, i.name) for i in use.imports] == [(1, "semifl.alpha.core"), (2, "semifl.beta.helper")]
    core = modules["semifl.alpha.core"]
    assert [(i.line, i.name, i.lazy) for i in core.imports] == [(1, "os", False), (5, "semifl.beta.use", True)]

    bad = violations(modules, rules)
    assert bad == [
        "firmware/micropython/main.py:2: import wire (semifl_node -> semifl.protocol not allowed)",
        "firmware/micropython/main.py:4: import numpy "
        "(semifl_node -> numpy not allowed: not on a board (only builtins, stdlib, umqtt, link, protocol))",
        "host/semifl/alpha/core.py:5: from semifl.beta import use (semifl.alpha -> semifl.beta not allowed)",
    ]

    # alpha -> beta (the forbidden lazy import) and beta -> alpha make a circle, in layers and in modules
    lg = layer_graph(modules, rules)
    assert cycles(lg) == [["semifl.alpha", "semifl.beta", "semifl.alpha"]]
    mg = module_graph(modules)
    assert cycles(mg) == [["semifl.alpha.core", "semifl.beta.use", "semifl.alpha.core"]]
    assert "host/semifl/alpha/core.py:5: from semifl.beta import use" in describe_cycles(mg, cycles(mg))

    assert coverage_problems(modules, rules) == [
        "host/semifl/stray.py: module semifl.stray is in no layer of the table (docs/architecture.md)"]


def test_checker_reads_table_errors_and_circles():
    circle = SYNTHETIC_DOC.replace("| `semifl.alpha` | the bottom | — |", "| `semifl.alpha` | the bottom | `semifl.beta` |")
    rules = parse_table(circle)
    assert cycles({a: {b: [] for b in bs} for a, bs in rules.items()})[0] == ["semifl.alpha", "semifl.beta", "semifl.alpha"]
    with pytest.raises(ValueError, match="semifl.gamma is not a layer"):
        parse_table(SYNTHETIC_DOC.replace("`semifl.alpha` (and prose", "`semifl.gamma` (and prose"))
    with pytest.raises(ValueError, match="no heading"):
        parse_table("# nothing here\n")
