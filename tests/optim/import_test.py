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
"""`import nl_jax.optim` stays light: no orbax, grain, tensorflow, seqio (nor flax)."""

import os
import subprocess
import sys

_HEAVY = ("orbax", "grain", "tensorflow", "seqio", "flax")


def test_import_does_not_pull_heavy_modules():
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  code = ("import sys, nl_jax.optim; "
          f"print([m for m in {_HEAVY!r} if any(k == m or k.startswith(m + '.') "
          "for k in sys.modules)])")
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=root, check=True, timeout=120)
  assert out.stdout.strip() == "[]", out.stdout + out.stderr
