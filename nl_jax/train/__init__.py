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
"""Training for nl_jax: configs, mesh and sharding, optimizers, loop, checkpoints, metrics.

Entry points: `train_and_evaluate(config, workdir)` (used by ``launch/train.py``),
`default_config` / `validate` (experiment configs), `load_for_eval(path) -> (model, config)`,
`load_trained(workdir) -> (model, tokenizer, config)` (text in, text out: `sampling`).
Importing this package pulls in jax, flax, optax, orbax and grain (not TensorFlow).
"""

from nl_jax.train.checkpoint import Checkpointer, load_for_eval
from nl_jax.train.config import ConfigError, default_config, validate
from nl_jax.train.loop import (
    NonFiniteError,
    build_setup,
    make_eval_step,
    make_train_step,
    train_and_evaluate,
)
from nl_jax.train.sampling import load_trained

__all__ = [
    "Checkpointer",
    "ConfigError",
    "NonFiniteError",
    "build_setup",
    "default_config",
    "load_for_eval",
    "load_trained",
    "make_eval_step",
    "make_train_step",
    "train_and_evaluate",
    "validate",
]
