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
"""Hope (self-modifying Titans + CMS), tiny preset, on the embedded Shakespeare corpus.

The default model of the README.

Trains on a laptop CPU in a few minutes (300 steps of 32 x 64 byte tokens) with a
visibly falling loss and held-out perplexity every 100 steps::

  python launch/train.py --config=experiments/configs/hope_tiny.py \\
      --workdir=/tmp/hope_tiny

Quick check (6 steps): ``--config=experiments/configs/hope_tiny.py:smoke``.
"""

from experiments.configs import common


def get_config(arg=None):
  """The training config (``arg``: None, "smoke" or "files"; see common.py)."""
  return common.tiny("hope", arg)
