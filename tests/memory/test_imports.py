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
"""The memory and optimizer packages stay free of the heavy training/data stack."""

import subprocess
import sys

import pytest

HEAVY = ("orbax", "grain", "tensorflow", "seqio")


@pytest.mark.parametrize("module", ("nl_jax.memory", "nl_jax.optim"))
def test_import_is_light(module):
  code = (f"import sys, {module}; "
          f"bad = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]; "
          "print(','.join(sorted(bad)))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "", f"{module} imported {out.stdout.strip()}"
