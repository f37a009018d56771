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
"""`python -m nl_jax.eval` on a checkpoint written by the real trainer."""

import json
import os
import subprocess
import sys

import pytest

from nl_jax.eval import __main__ as cli
from nl_jax.eval import runner, suite
from nl_jax.eval.examples import score


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  from nl_jax import train

  c = train.default_config(
      "transformer_pp", "tiny", model_overrides=dict(n_layers=1, d_model=32, n_heads=2,
                                                     head_dim=16, mlp_hidden=64),
      seq_len=32, batch_size=8, eval_batch_size=8)
  c.train.steps = 2
  c.optimizer.warmup_steps = 0
  c.train.eval_every = 0
  c.train.eval_batches = 1
  c.train.checkpoint_every = 0
  c.train.tensorboard = False
  c.train.async_checkpointing = False
  path = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(c, path)
  return path


def test_cli_table_json_and_agreement(workdir, capsys):
  assert cli.main(["--task", "mqar,niah", "--checkpoint", workdir, "--lengths", "400",
                   "--num-examples", "2", "--batch-size", "2"]) == 0
  captured = capsys.readouterr()
  printed = captured.out
  assert "| mqar | accuracy | 0.4 |" in printed and "| s_niah_3 | accuracy | 0.0 |" in printed
  assert "| subtask | metric | chance | baseline | 400 |" in printed
  # Progress on stderr: each task, then each subtask at each length as it finishes.
  assert "task mqar (1/2): lengths [400]" in captured.err
  assert "niah length 400 (1/1), mk_niah_1 (4/4): accuracy" in captured.err
  with open(os.path.join(workdir, "eval", "niah.json")) as f:
    out = json.load(f)
  assert out["model"] == "transformer_pp" and out["lengths"] == [400]
  assert [r["subtask"] for r in out["rows"]] == ["s_niah_1", "s_niah_2", "s_niah_3",
                                                  "mk_niah_1"]
  assert all(0.0 <= r["value"] <= 1.0 and r["n"] == 2 for r in out["rows"])
  assert all(r["chance"] < 1e-6 and 0.0 <= r["baseline"] <= 1.0 for r in out["rows"])
  # The numbers are those of scoring the restored model directly.
  from nl_jax.train import load_for_eval

  model, _ = load_for_eval(workdir)
  with open(os.path.join(workdir, "eval", "mqar.json")) as f:
    mqar_rows = json.load(f)["rows"]
  exs = suite.examples_for("mqar", 400, 2, 0)["mqar"]
  direct = score(runner.make_logits_fn(model), exs, batch_size=2)
  assert mqar_rows[0]["n"] == 72
  assert mqar_rows[0]["value"] == pytest.approx(direct["accuracy"])


def test_cli_bad_arguments(workdir):
  with pytest.raises(SystemExit, match="unknown"):
    cli.main(["--task", "nope", "--checkpoint", workdir])
  with pytest.raises(ValueError, match="cannot parse"):
    cli.main(["--task", "mqar", "--checkpoint", workdir, "--lengths", "4q"])


def test_cli_user_errors_are_one_line(tmp_path):
  """From the shell: a missing workdir or a bad length is one line with exit status 2."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  for args, expected in [
      (["--checkpoint", str(tmp_path / "none")], f"load_for_eval: {tmp_path / 'none'} is not"),
      (["--model", "hope", "--lengths", "4q"], "--lengths: cannot parse '4q'"),
  ]:
    proc = subprocess.run([sys.executable, "-m", "nl_jax.eval", "--task", "niah", *args],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("python -m nl_jax.eval: error: ") and expected in lines[-1]
