# Copyright 2026 The nl_jax Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Every module of nl_jax and pallas_kernels imports on its own, and none imports in a circle.

(a) Each module is imported in a process of its own whose ``sys.modules`` holds no module of
either package, so a module that only works when another one happened to be imported first
fails here. Starting ~90 interpreters that each import jax takes minutes on 2 cores, so one
subprocess imports the heavy third-party packages once (``_PRELOAD``: what a fresh interpreter
would import on any module's first lines anyway) and forks one child per module, a few at a
time. What the preload could hide: a module that reaches a third-party *submodule* by
attribute (``flax.nnx`` after only ``import flax``) without importing it.

(b) The static import graph (module-level imports only, read with ``ast``: relative imports
resolved, ``from pkg import name`` counted as an import of ``pkg.name`` when that is a
module, importing ``a.b.c`` counted as importing the packages ``a.b`` on the way) has no
cycle. Imports inside functions are the deliberate way to defer a heavy optional dependency
and are not edges; ``if TYPE_CHECKING:`` blocks are skipped.
"""

import ast
import json
import os
import pathlib
import subprocess
import sys

_REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("nl_jax", "pallas_kernels")
_PRELOAD = ("numpy", "jax", "jax.numpy", "optax", "flax", "flax.nnx", "absl.logging",
            "ml_collections", "orbax.checkpoint", "grain")

# Runs in its own interpreter: stdin is a JSON list of module names, stdout a JSON dict
# {module: traceback} of those that failed to import.
_FORK_IMPORTER = r"""
import importlib, json, os, sys, tempfile, traceback
packages, preload, modules, workers = json.loads(sys.stdin.read())
for name in preload:
  try:
    importlib.import_module(name)
  except ImportError:
    pass  # an optional extra that is not installed: the module that needs it will say so
ours = sorted(m for m in sys.modules if m.split(".")[0] in packages)
assert not ours, f"the preload imported {ours}"
out_dir = tempfile.mkdtemp()
running, failed = {}, {}

def reap():
  pid, status = os.wait()
  name = running.pop(pid)
  if status != 0:
    path = os.path.join(out_dir, name)
    failed[name] = open(path).read() if os.path.exists(path) else f"exit status {status}"

for name in modules:
  if len(running) >= workers:
    reap()
  pid = os.fork()
  if pid == 0:
    code = 0
    try:
      importlib.import_module(name)
    except BaseException:
      with open(os.path.join(out_dir, name), "w") as f:
        f.write(traceback.format_exc())
      code = 1
    os._exit(code)
  running[pid] = name
while running:
  reap()
print(json.dumps(failed))
"""


def _modules() -> dict[str, pathlib.Path]:
  """Dotted name -> file of every module of the two packages."""
  mods = {}
  for pkg in PACKAGES:
    for path in sorted((_REPO / pkg).rglob("*.py")):
      parts = path.relative_to(_REPO).with_suffix("").parts
      if parts[-1] == "__init__":
        parts = parts[:-1]
      mods[".".join(parts)] = path
  return mods


def _is_type_checking(test: ast.expr) -> bool:
  return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
          or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(body):
  """The import statements that run when the module is imported (not those in functions)."""
  for node in body:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    elif isinstance(node, ast.If):
      if not _is_type_checking(node.test):
        yield from _import_nodes(node.body)
      yield from _import_nodes(node.orelse)
    elif isinstance(node, ast.Try):
      for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
        yield from _import_nodes(block)
    elif isinstance(node, (ast.With, ast.ClassDef)):
      yield from _import_nodes(node.body)


def _parents(name: str) -> list[str]:
  parts = name.split(".")
  return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, set[str]]:
  """Module -> the modules of the two packages its import executes (see the module doc).

  The packages enclosing the importer are not edges: they are already being imported when
  it runs, so ``pkg/__init__.py`` importing ``pkg.a`` which imports ``pkg.b`` is no cycle.
  """
  mods = _modules()
  graph = {m: set() for m in mods}
  for mod, path in mods.items():
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    targets = []
    for node in _import_nodes(ast.parse(path.read_text(), str(path)).body):
      if isinstance(node, ast.Import):
        targets += [alias.name for alias in node.names]
        continue
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
      targets.append(base)
      targets += [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
    enclosing = set(_parents(mod)) | {mod}
    for target in targets:
      graph[mod].update(n for n in _parents(target) + [target]
                        if n in mods and n not in enclosing)
  return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One shortest cycle (``[a, b, ..., a]``) per strongly connected component of > 1 module."""
  index, low, on_stack, stack, components = {}, {}, set(), [], []

  def visit(v):  # Tarjan; the graph is ~100 modules deep at most
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      if len(component) > 1 or v in graph[v]:
        components.append(component)

  for v in sorted(graph):
    if v not in index:
      visit(v)
  cycles = []
  for component in components:
    start = min(component)
    previous, frontier, last = {start: None}, [start], None
    while last is None:  # breadth first, so the cycle printed is a shortest one through start
      nxt = []
      for v in frontier:
        for w in sorted(graph[v] & component):
          if w == start and last is None:
            last = v
          elif w not in previous:
            previous[w] = v
            nxt.append(w)
      frontier = nxt
    path = [last]
    while previous[path[-1]] is not None:
      path.append(previous[path[-1]])
    cycles.append(path[::-1] + [start])
  return cycles


def test_find_cycles_reports_a_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
  assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
  assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_resolves_relative_and_submodule_imports():
  graph = import_graph()
  # `from pallas_kernels.newton_schulz import reference` names a submodule: an edge to it
  assert "pallas_kernels.newton_schulz.reference" in graph["nl_jax.optim.newton_schulz"]
  # importing nl_jax.layers.x from nl_jax.models runs nl_jax/layers/__init__.py too
  assert "nl_jax.layers" in graph["nl_jax.train.loop"]
  assert "nl_jax" not in graph["nl_jax.train.loop"]  # the enclosing package is no edge


def test_import_graph_has_no_cycle():
  cycles = find_cycles(import_graph())
  assert not cycles, "import cycles (module-level imports):\n" + "\n".join(
      " -> ".join(c) for c in cycles)


def _import_each_alone(root, packages, preload, modules) -> dict[str, str]:
  """{module: traceback} of the modules that fail to import in a process of their own."""
  env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.setdefault("JAX_PLATFORMS", "cpu")
  workers = max(1, min(4, os.cpu_count() or 1))
  out = subprocess.run(
      [sys.executable, "-c", _FORK_IMPORTER], input=json.dumps(
          [list(packages), list(preload), list(modules), workers]),
      capture_output=True, text=True, cwd=root, env=env, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-4000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_alone_catches_a_module_that_needs_another_imported_first(tmp_path):
  pkg = tmp_path / "fakepkg"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "b.py").write_text("X = 1\n")
  (pkg / "a.py").write_text("import fakepkg.b\n")
  (pkg / "c.py").write_text("import fakepkg\nY = fakepkg.b.X\n")  # works only after a or b
  failed = _import_each_alone(tmp_path, ["fakepkg"], [],
                              ["fakepkg.a", "fakepkg.b", "fakepkg.c"])
  assert list(failed) == ["fakepkg.c"]
  assert "has no attribute 'b'" in failed["fakepkg.c"]


def test_every_module_imports_on_its_own():
  modules = sorted(_modules())
  assert len(modules) > 50  # both packages found
  failed = _import_each_alone(_REPO, PACKAGES, _PRELOAD, modules)
  assert not failed, "\n\n".join(f"import {m} alone fails:\n{tb}" for m, tb in failed.items())
