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
"""`import nl_jax.data` must stay light: no TensorFlow, no seqio."""

import pathlib
import subprocess
import sys

_REPO = pathlib.Path(__file__).resolve().parents[2]


def test_import_does_not_pull_tensorflow_or_seqio():
  code = (
      "import sys, nl_jax.data\n"
      "from nl_jax.data import seqio_adapter, checkpointing, train_spm\n"
      "heavy = [m for m in ('tensorflow', 'seqio', 'sentencepiece') if m in sys.modules]\n"
      "assert not heavy, heavy\n"
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False, cwd=_REPO)
  assert result.returncode == 0, result.stderr
