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
"""Every extra of setup.py installs what the docs use it for.

``NL_JAX_CI_EXTRAS=test,monitoring,...`` (set by .ci/run for the extras it installed) makes
a missing module a failure; otherwise extras that are not installed are skipped.
"""

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# extra -> modules it must make importable (import names, not distribution names).
EXTRA_MODULES = {
    "test": ["pytest", "xdist", "sentencepiece", "nbmake", "ipykernel", "matplotlib",
             "tensorboardX", "google_crc32c"],
    "tokenizers": ["sentencepiece"],
    "monitoring": ["tensorboardX", "google_crc32c", "tensorboard", "matplotlib"],
    "data": ["pyarrow", "pyarrow.parquet", "google_crc32c"],
    "seqio": ["seqio"],
    "notebooks": ["ipykernel", "nbmake", "nbconvert", "matplotlib"],
}


def _setup_extras() -> dict:
  tree = ast.parse((ROOT / "setup.py").read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EXTRAS"
                                            for t in node.targets):
      return ast.literal_eval(node.value)
  raise AssertionError("setup.py has no EXTRAS")


def _required() -> set:
  return {e for e in os.environ.get("NL_JAX_CI_EXTRAS", "").split(",") if e}


def test_every_extra_is_checked():
  assert set(_setup_extras()) == set(EXTRA_MODULES)
  assert _required() <= set(EXTRA_MODULES)


@pytest.mark.parametrize("extra", sorted(EXTRA_MODULES))
def test_extra_imports(extra):
  for module in EXTRA_MODULES[extra]:
    if extra in _required():
      importlib.import_module(module)
    else:
      pytest.importorskip(module)
  if extra == "notebooks":
    # The notebook README renders it with `jupyter nbconvert`.
    proc = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--version"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
