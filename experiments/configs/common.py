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
"""Shared pieces of the training configs (experiments/configs/lm.py holds the table of models
and sizes).

The mode (the last entry of lm.py's arg, ``--config=experiments/configs/lm.py:hope,tiny,smoke``):

* None: the run as described in lm.py.
* ``smoke``: the same model and data pipeline shrunk to a few steps (tests, quick checks).
* ``files``: paper-scale data from the environment: ``NL_JAX_TRAIN_FILES`` and
  ``NL_JAX_EVAL_FILES`` (comma-separated globs of Parquet files with a ``text`` column, e.g.
  FineWeb-Edu; ``.array_record`` / ``.tfrecord`` globs select those readers) and
  ``NL_JAX_TOKENIZER`` (``spm:/path/to/model.model``; default ``byte``).
"""

import os

import ml_collections

from nl_jax.train import config as config_lib

ARGS = (None, "smoke", "files")

# The project's Hope: the model of the paper-scale configs (lm.py:hope,760m / hope,1_3b) and the
# reference row of experiments/ablations. Table 6 ablates Hope's inner momentum and its
# adaptive q, so the paper's Hope has both; the rest is the default profile, whose differences
# from the paper profile (``--config.model.profile=paper``) nl_jax/models/hope.py tabulates:
# smt.anchored_step mean (paper: sum, no 1/C), smt.rule dgd (paper_l2), smt.value_norm l2
# (none), cms.objective local (ntp), cms.max_step_norm 1.0 (inf).
HOPE_REFERENCE = {"smt.momentum": True, "smt.adaptive_q": True}


def _file_source(paths: tuple[str, ...]) -> str:
  first = paths[0]
  if ".array_record" in first or first.endswith(".arrayrecord"):
    return "arrayrecord"
  if ".tfrecord" in first:
    return "tfrecord"
  return "parquet"


def _globs(var: str) -> tuple[str, ...]:
  value = os.environ.get(var, "")
  if not value:
    raise ValueError(f"config arg 'files' needs the environment variable {var} (comma-"
                     "separated globs of training/evaluation files)")
  return tuple(p for p in value.split(",") if p)


def tiny(model_name: str, arg: str | None, *, steps: int = 300, seq_len: int = 64,
         batch_size: int = 32, learning_rate: float = 3e-3,
         model_overrides: dict | None = None) -> ml_collections.ConfigDict:
  """A CPU-sized run on the embedded Shakespeare corpus (byte tokenizer).

  Every tiny config uses the same data settings (32 x 64 tokens per step), so their
  losses and tokens/s compare directly.
  """
  c = config_lib.default_config(model_name, "tiny", model_overrides=model_overrides,
                                seq_len=seq_len, batch_size=batch_size,
                                eval_batch_size=batch_size)
  c.optimizer.learning_rate = learning_rate
  c.optimizer.warmup_steps = max(1, steps // 15)
  c.train.steps = steps
  c.train.log_every = 10
  c.train.eval_every = 100
  c.train.eval_batches = 4
  c.train.checkpoint_every = 100
  return _apply_arg(c, arg)


def paper(model_name: str, preset: str, arg: str | None, *, tokens: float,
          learning_rate: float, seq_len: int = 4096, batch_size: int = 128,
          model_overrides: dict | None = None) -> ml_collections.ConfigDict:
  """A paper-scale run (760M / 1.3B): bf16 activations, remat, FSDP over all devices.

  Args:
    model_name: registry model name.
    preset: "760m" or "1_3b".
    arg: see module docstring (``files`` for real data).
    tokens: training tokens (sets ``train.steps``).
    learning_rate: peak AdamW learning rate (cosine decay to 10%).
    seq_len: tokens per row.
    batch_size: global rows per step.
    model_overrides: model config fields besides bf16 and remat (e.g. ``HOPE_REFERENCE``).
  """
  c = config_lib.default_config(model_name, preset,
                                model_overrides={"dtype": "bfloat16", "remat": True,
                                                 **(model_overrides or {})},
                                seq_len=seq_len, batch_size=batch_size,
                                eval_batch_size=batch_size, num_threads=8,
                                prefetch_buffer_size=4)
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.optimizer.learning_rate = learning_rate
  c.optimizer.warmup_steps = 2000
  c.optimizer.b2 = 0.95
  c.train.steps = int(tokens // (seq_len * batch_size))
  c.train.log_every = 50
  c.train.eval_every = 2000
  c.train.eval_batches = 16
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  return _apply_arg(c, arg)


def _apply_arg(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  if arg not in ARGS:
    raise ValueError(f"config mode {arg!r}: expected one of {list(ARGS)} (the last entry of "
                     "--config=experiments/configs/lm.py:<model>,<size>,<mode>)")
  if arg == "smoke":
    c.train.steps = 6
    c.train.log_every = 2
    c.train.eval_every = 3
    c.train.eval_batches = 1
    c.train.checkpoint_every = 3
    c.optimizer.warmup_steps = 2
    c.data.seq_len = max(32, c.data.alignment or 1)
    c.data.batch_size = 8
    c.data.eval_batch_size = 8
  elif arg == "files":
    paths = _globs("NL_JAX_TRAIN_FILES")
    c.data.name = _file_source(paths)
    c.data.paths = paths
    c.data.eval_paths = _globs("NL_JAX_EVAL_FILES")
    c.data.tokenizer = os.environ.get("NL_JAX_TOKENIZER", "byte")
    if c.data.name != "parquet":
      c.data.record_format = os.environ.get("NL_JAX_RECORD_FORMAT", "text")
  return c
