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
"""Every source file carries the Apache-2.0 header; the top-level layout is complete."""

import ast
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEADER = (ROOT / ".license_header.txt").read_text().strip().splitlines()
SKIP_DIRS = {".venv", ".ci_venv", ".git", "build", "dist", "__pycache__", ".pytest_cache"}


def _skipped(name: str) -> bool:
  # Virtual environments live in the tree (.venv, .venv312, CI's .ci_venv_<name>).
  return (name in SKIP_DIRS or name.endswith(".egg-info")
          or name.startswith((".venv", ".ci_venv")))


def _sources():
  for dirpath, dirnames, filenames in os.walk(ROOT):
    dirnames[:] = [d for d in dirnames if not _skipped(d)]
    for name in filenames:
      path = pathlib.Path(dirpath) / name
      if path.suffix in (".py", ".sh") or name == "run":
        yield path


def test_every_source_file_has_the_license_header():
  missing = []
  for path in _sources():
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#!")]
    if lines[:len(HEADER)] != HEADER:
      missing.append(str(path.relative_to(ROOT)))
  assert not missing, f"files without the Apache header: {missing}"


def test_top_level_layout():
  for name in ("nl_jax", "pallas_kernels", "experiments", "launch", "tests", "WORKSPACE.md",
               "setup.py", "LICENSE", "README.md", ".ci/run"):
    assert (ROOT / name).exists(), name


# Functions of the library over 80 lines of code (docstrings aside), each with its reason.
LONG_FUNCTIONS = {
    # optax's pattern: the builder holds the argument checks and the init / update closures
    # (its update_fn alone is 74 lines; the moments, the guard and the scaling are helpers).
    ("nl_jax/optim/m3.py", "scale_by_m3"),
}


def test_library_functions_stay_short():
  long = []
  for path in sorted((ROOT / "nl_jax").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      lines = node.end_lineno - node.lineno + 1
      first = node.body[0]
      if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
          first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
      name = (str(path.relative_to(ROOT)), node.name)
      if lines > 80 and name not in LONG_FUNCTIONS:
        long.append(f"{name[0]}:{node.lineno} {node.name} ({lines} lines)")
  assert not long, f"functions over 80 lines of code (split them, or list one with its " \
                   f"reason in LONG_FUNCTIONS): {long}"
