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
"""Two real JAX processes (localhost): default sharding and orbax resume per process."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import json, sys
import jax
import numpy as np
port, pid, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
import orbax.checkpoint as ocp
from nl_jax import data

config = data.validate_config(data.DataConfig(seq_len=32, batch_size=4, seed=1))
assert (config.shard_index, config.shard_count) == (pid, 2), config
it = data.make_train_iterator(config)
first = next(it)
assert first["inputs"].shape == (2, 32)
next(it)
mngr = ocp.CheckpointManager(workdir, item_names=("data",))
mngr.save(2, args=data.checkpointing.composite_save_args(it))
mngr.wait_until_finished()
expected = next(it)
fresh = data.make_train_iterator(config)
mngr.restore(2, args=data.checkpointing.composite_restore_args(fresh))
got = next(fresh)
for k in expected:
  np.testing.assert_array_equal(got[k], expected[k])
mngr.close()
print("RESULT " + json.dumps(first["inputs"][0].tolist()))
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_shard_and_resume(tmp_path):
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
             PYTHONPATH=str(_REPO))
  procs = [subprocess.Popen([sys.executable, "-c", _SCRIPT, str(port), str(i), str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=_REPO) for i in range(2)]
  outputs = [p.communicate(timeout=240) for p in procs]
  for p, (_, err) in zip(procs, outputs, strict=True):
    assert p.returncode == 0, err[-3000:]
  rows = [json.loads(out.split("RESULT ", 1)[1]) for out, _ in outputs]
  assert rows[0] != rows[1]  # Each process reads its own documents.
  for i in range(2):
    assert (tmp_path / "2" / "data" / f"process_{i}-of-2.json").is_file()
