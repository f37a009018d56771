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
"""Model, optimizer and schedule names are each listed once, by the table that builds them.

`registry._ENTRIES` owns the model names, `optimizers._FUNCTIONS` the optimizer names and
`optimizers._SCHEDULES` the schedule names; the training config only re-exports them. Building
every name is tested where the names are used (tests/train/test_config.py, test_registry.py).
"""

import ast
import pathlib

import pytest

from nl_jax.models import registry
from nl_jax.train import config as config_lib
from nl_jax.train import optimizers

_REPO = pathlib.Path(__file__).resolve().parents[2]
# (the list, its owner module, the table it is derived from)
_LISTS = {
    "MODEL_NAMES": (registry.MODEL_NAMES, "nl_jax/models/registry.py", registry._ENTRIES),  # pylint: disable=protected-access
    "OPTIMIZERS": (optimizers.OPTIMIZERS, "nl_jax/train/optimizers.py", optimizers._FUNCTIONS),  # pylint: disable=protected-access
    "SCHEDULES": (optimizers.SCHEDULES, "nl_jax/train/optimizers.py", optimizers._SCHEDULES),  # pylint: disable=protected-access
}


@pytest.mark.parametrize("name", sorted(_LISTS))
def test_the_config_re_exports_the_owners_list(name):
  names, _, table = _LISTS[name]
  assert getattr(config_lib, name) is names
  assert names == tuple(table)


@pytest.mark.parametrize("name", sorted(_LISTS))
def test_no_module_writes_the_list_again(name):
  names, owner, _ = _LISTS[name]
  copies = []
  for path in sorted((_REPO / "nl_jax").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        strings = {e.value for e in node.elts
                   if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        if strings >= set(names):
          copies.append(f"{path.relative_to(_REPO)}:{node.lineno}")
  assert not copies, f"{name} written again outside {owner} (derive it instead): {copies}"
