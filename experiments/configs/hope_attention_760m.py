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
"""Hope-Attention (softmax attention + CMS), 760M parameters, pretraining on 30e9 tokens.

The model is the default profile (CMS objective local and each in-context step clipped at
norm 1.0, where the paper has the next-token objective and no clip:
``--config.model.profile=paper``; table in nl_jax/models/hope.py).

bf16 activations, rematerialization, FSDP over every device, AdamW (peak lr 4e-4,
cosine), 4096-token rows, 128 rows (0.5M tokens) per step. Real data comes from the
environment (``files`` arg, see experiments/configs/common.py); without it the embedded
corpus is used (a dry run, or `launch/compile_only.py`). On every host::

  NL_JAX_TRAIN_FILES='gs://bucket/fineweb-edu/train/*.parquet' \\
  NL_JAX_EVAL_FILES='gs://bucket/fineweb-edu/val/*.parquet' \\
  NL_JAX_TOKENIZER=spm:/path/to/tokenizer.model \\
  python launch/train.py --config=experiments/configs/hope_attention_760m.py:files \\
      --workdir=gs://bucket/runs/hope_attention_760m

(``launch/tpu_vm.sh`` / ``launch/gpu_multihost.sh`` run it on all hosts.) Check memory
first: ``python launch/compile_only.py --config=experiments/configs/hope_attention_760m.py
--topology=v5p:4x4x4``.
"""

from experiments.configs import common


def get_config(arg=None):
  """The training config (``arg``: None, "smoke" or "files"; see common.py)."""
  return common.paper("hope_attention", "760m", arg, tokens=30e9, learning_rate=4e-4)
