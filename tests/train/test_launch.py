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
"""launch/train.py end to end in subprocesses: preemption + resume, outputs, CLI errors.

One workdir is shared: a run is SIGTERMed mid-training (preemption), then the same command
resumes it to the end; the smoke checks read that finished workdir.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nl_jax.train import metrics as metrics_lib
from tests.train.conftest import ROOT, launch_cmd, run, subprocess_env

CONFIG = "experiments/configs/lm.py:transformer,tiny,smoke"
COMMON = ("--config.model.n_layers=1", "--config.optimizer.decay_steps=100",
          "--config.train.log_every=1", "--config.train.checkpoint_every=0")


@pytest.fixture(scope="module")
def preempted_then_resumed(tmp_path_factory, compile_cache):
  workdir = tmp_path_factory.mktemp("launch") / "run"
  env = subprocess_env(compile_cache)
  # Far more steps than can run before the SIGTERM arrives.
  cmd = launch_cmd(CONFIG, workdir, *COMMON, "--config.train.steps=100000",
                   "--config.train.eval_batches=0")
  proc = subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  metrics_file = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  try:
    while time.time() < deadline and proc.poll() is None:
      if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 3:
        break
      time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    _, stderr1 = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, stderr1[-3000:]
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert len(saved) == 1, saved
  preempted_at = saved[0]
  rows_before = metrics_lib.read_jsonl(workdir)
  # Same command, fewer total steps so that it finishes; with held-out eval at the end.
  final = preempted_at + 2
  proc2 = run(launch_cmd(CONFIG, workdir, *COMMON, f"--config.train.steps={final}",
                         "--config.train.allow_config_changes=True"), env)
  return {"workdir": workdir, "preempted_at": preempted_at, "final": final,
          "stderr1": stderr1, "stderr2": proc2.stderr, "rows_before": rows_before}


def test_preemption_saves_and_restart_resumes(preempted_then_resumed):
  r = preempted_then_resumed
  assert "preempted: checkpoint of step" in r["stderr1"]
  assert f"resumed from step {r['preempted_at']}" in r["stderr2"]
  steps_before = [row["step"] for row in r["rows_before"] if row["split"] == "train"]
  # Every step up to the preemption checkpoint was logged before the exit: nothing lost.
  assert steps_before == list(range(1, r["preempted_at"] + 1))
  rows = metrics_lib.read_jsonl(r["workdir"])
  steps = [row["step"] for row in rows if row["split"] == "train"]
  assert steps == list(range(1, r["final"] + 1))  # continues at preempted_at + 1, no repeats
  saved = sorted(int(p.name) for p in (r["workdir"] / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert saved[-1] == r["final"] and r["preempted_at"] in saved


def test_smoke_outputs(preempted_then_resumed):
  r = preempted_then_resumed
  workdir = r["workdir"]
  config = json.loads((workdir / "config.json").read_text())
  assert config["model_name"] == "transformer_pp" and config["train"]["steps"] == r["final"]
  rows = metrics_lib.read_jsonl(workdir)
  train = [row for row in rows if row["split"] == "train"]
  evals = [row for row in rows if row["split"] == "eval"]
  assert evals and evals[-1]["step"] == r["final"] and np.isfinite(evals[-1]["perplexity"])
  for key in ("loss", "perplexity", "lr", "grad_norm", "update_norm", "param_norm"):
    assert np.isfinite(train[-1][key]), key
  assert "tokens_per_s" in train[-1]
  assert train[-1]["loss"] < train[0]["loss"]
  assert "tok/s" in r["stderr2"] and "ETA" in r["stderr2"]  # the console progress line
  # One event file per run (the preempted one and the resumed one).
  files = sorted((workdir / "tensorboard").iterdir())
  assert len(files) == 2
  events = [e for f in files for e in metrics_lib.read_event_scalars(str(f))]
  assert any("train/loss" in scalars for _, scalars in events)
  assert any(step == r["final"] and "eval/perplexity" in s for step, s in events)


def test_cli_rejects_typos(tmp_path, compile_cache):
  env = subprocess_env(compile_cache)
  typo = subprocess.run(launch_cmd(CONFIG, tmp_path / "a", "--config.train.stepz=3"),
                        env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=120,
                        check=False)
  assert typo.returncode != 0 and "stepz" in typo.stderr and "steps" in typo.stderr
  assert not os.path.exists(tmp_path / "a")


@pytest.mark.slow
def test_hope_tiny_default_config_trains(tmp_path, compile_cache):
  """The README's default model end to end (slow: Hope's step takes minutes to compile)."""
  workdir = tmp_path / "hope"
  proc = run(launch_cmd("experiments/configs/lm.py:hope,tiny,smoke", workdir),
             subprocess_env(compile_cache), timeout=900)
  rows = metrics_lib.read_jsonl(workdir)
  train = [row for row in rows if row["split"] == "train"]
  assert [row["step"] for row in train] == [2, 4, 6]
  assert all(np.isfinite(row["loss"]) for row in train)
  assert any(k.startswith("aux/block_0/cms/") for k in train[-1])  # per-level memory stats
  assert "done: step 6" in proc.stderr


def test_compile_only_reports_memory_and_flops(compile_cache):
  """launch/compile_only.py on 8 simulated devices: per-device memory, flops, the estimate."""
  env = subprocess_env(compile_cache, devices=8)
  proc = run([sys.executable, str(ROOT / "launch" / "compile_only.py"), f"--config={CONFIG}",
              "--topology=cpu:8", "--config.model.n_layers=1", "--peak_tflops=1"], env)
  out = proc.stdout
  assert "mesh {'data': 8" in out and "8 x cpu" in out, out
  assert "temp_size" in out and "peak (args+out-alias+temp)" in out, out
  assert "flops per device per step" in out and "estimated tokens/s per device" in out, out
  bad = subprocess.run([sys.executable, str(ROOT / "launch" / "compile_only.py"),
                        f"--config={CONFIG}", "--topology=cpu:64"], env=env, cwd=str(ROOT),
                       capture_output=True, text=True, timeout=120, check=False)
  assert bad.returncode != 0 and "cpu:64" in bad.stderr
