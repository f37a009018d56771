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
"""Two real local processes (jax.distributed on localhost) == one process, same global data.

Both runs read the data as 2 shards (``data.shard_count=2``): the two processes one shard
each, the single process both (concatenated), so the global batches are identical and the
losses and parameters must agree to float tolerance (the all-reduce order differs).
"""

import socket
import subprocess

import jax
import numpy as np
import pytest

from nl_jax.train import checkpoint as ckpt_lib
from nl_jax.train import metrics as metrics_lib
from tests.train.conftest import ROOT, launch_cmd, run, subprocess_env

CONFIG = "experiments/configs/lm.py:transformer,tiny,smoke"
ARGS = ("--config.model.n_layers=1", "--config.data.shard_count=2", "--config.train.steps=3",
        "--config.train.log_every=1", "--config.train.eval_batches=1",
        "--config.optimizer.decay_steps=100")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path, compile_cache):
  multi, single = tmp_path / "multi", tmp_path / "single"
  address = f"127.0.0.1:{_free_port()}"
  procs = []
  for pid in range(2):
    env = subprocess_env(compile_cache, devices=2, JAX_COORDINATOR_ADDRESS=address,
                         JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=pid)
    procs.append(subprocess.Popen(launch_cmd(CONFIG, multi, *ARGS), env=env, cwd=str(ROOT),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=400)[1])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, err in zip(procs, outputs, strict=True):
    assert p.returncode == 0, err[-4000:]
  assert "process 1 of 2; 2 local / 4 global devices" in outputs[1]
  # grain wrote one iterator file per process next to the arrays.
  data_dir = multi / "checkpoints" / "3" / "data"
  assert sorted(f.name for f in data_dir.iterdir() if f.name.startswith("process_")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  run(launch_cmd(CONFIG, single, *ARGS), subprocess_env(compile_cache, devices=4))

  def losses(workdir, split):
    return [r["loss"] for r in metrics_lib.read_jsonl(workdir) if r["split"] == split]

  np.testing.assert_allclose(losses(multi, "train"), losses(single, "train"), rtol=1e-5)
  np.testing.assert_allclose(losses(multi, "eval"), losses(single, "eval"), rtol=1e-5)
  from flax import nnx  # pylint: disable=g-import-not-at-top

  pm = nnx.to_pure_dict(nnx.state(ckpt_lib.load_for_eval(str(multi))[0], nnx.Param))
  ps = nnx.to_pure_dict(nnx.state(ckpt_lib.load_for_eval(str(single))[0], nnx.Param))
  for a, b in zip(jax.tree.leaves(pm), jax.tree.leaves(ps), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
