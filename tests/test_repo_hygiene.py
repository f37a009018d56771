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
