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
"""Shared helpers of the training tests: tiny configs, a compilation cache, subprocesses."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> str:
  """A persistent XLA cache: the same tiny step compiled in several runs/processes loads."""
  path = str(tmp_path_factory.mktemp("jax_cache"))
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def tiny_config(model_name: str = "transformer_pp", *, steps: int = 4, seq_len: int = 32,
                batch_size: int = 8, n_layers: int = 1, **train):
  """A seconds-sized config on the embedded corpus (fixed decay so runs can be split)."""
  from nl_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top

  c = config_lib.default_config(model_name, "tiny", model_overrides={"n_layers": n_layers},
                                seq_len=seq_len, batch_size=batch_size,
                                eval_batch_size=batch_size)
  c.optimizer.warmup_steps = 2
  c.optimizer.decay_steps = 100
  c.train.steps = steps
  c.train.log_every = 1
  c.train.eval_every = 0
  c.train.eval_batches = 0
  c.train.checkpoint_every = 0
  c.train.tensorboard = False
  c.train.async_checkpointing = False
  c.train.update(train)
  return c


def subprocess_env(cache_dir: str, devices: int = 1, **extra) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  env.update({k: str(v) for k, v in extra.items()})
  return env


def launch_cmd(config: str, workdir, *overrides: str) -> list[str]:
  return [sys.executable, str(ROOT / "launch" / "train.py"), f"--config={config}",
          f"--workdir={workdir}", *overrides]


def run(cmd, env, timeout=240) -> subprocess.CompletedProcess:
  proc = subprocess.run(cmd, env=env, cwd=str(ROOT), capture_output=True, text=True,
                        timeout=timeout, check=False)
  if proc.returncode != 0:
    raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc
