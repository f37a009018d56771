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
"""What a user sees around a run: compile message, samples, summary, loss.png, the next
commands, a finished workdir rerun, launch/sample.py, the README snippet, Ctrl-C."""

import re
import signal
import subprocess
import sys
import time

import pytest

from nl_jax.train import loop
from nl_jax.train import metrics as metrics_lib
from tests.train.conftest import ROOT, launch_cmd, run, subprocess_env

CONFIG = "experiments/configs/lm.py:transformer,tiny,smoke"
RUN = ("--config.model.n_layers=1", "--config.optimizer.decay_steps=100",
       "--config.train.steps=4", "--config.train.log_every=1", "--config.train.eval_every=0",
       "--config.train.eval_batches=1", "--config.train.checkpoint_every=0",
       "--config.train.sample_tokens=8")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, compile_cache):
  workdir = tmp_path_factory.mktemp("outputs") / "run"
  proc = run(launch_cmd(CONFIG, workdir, *RUN), subprocess_env(compile_cache))
  return workdir, proc.stderr


def test_console_story_of_a_run(finished):
  workdir, err = finished
  for noise in ("parameter shardings", "Unable to initialize backend", "overriding jax.Array"):
    assert noise not in err, err[-3000:]
  assert err.index("compiling the train step...") < err.index("compiled the train step")
  assert re.search(r"step 4/4 \| loss [\d.]+ \| ppl [\d.]+ .*tok/s .*ETA", err), err[-3000:]
  assert "sample step 4: 'ROMEO:\\n' -> " in err
  summary = err[err.index("done: step 4"):]
  assert "held-out loss" in summary and f"loss curve: {workdir}/loss.png" in summary
  assert f"python launch/sample.py --workdir={workdir}" in summary
  assert f"--checkpoint {workdir}" in summary
  assert f"tensorboard --logdir {workdir}/tensorboard" in summary
  assert (workdir / "loss.png").read_bytes()[:4] == b"\x89PNG"
  rows = metrics_lib.read_jsonl(workdir)
  (sample,) = [r for r in rows if r["split"] == "sample"]
  assert sample["step"] == 4 and sample["prompt"] == "ROMEO:\n"
  events = [e for f in (workdir / "tensorboard").iterdir()
            for e in metrics_lib.read_events(str(f))]
  assert any("samples/text_summary" in texts for _, _, texts in events)


def test_rerun_of_a_finished_workdir_says_so(finished, compile_cache):
  workdir, _ = finished
  proc = run(launch_cmd(CONFIG, workdir, *RUN), subprocess_env(compile_cache))
  assert f"already done: {workdir} finished step 4 (train.steps=4)" in proc.stderr
  assert "--config.train.steps=8" in proc.stderr and "launch/sample.py" in proc.stderr
  assert "None" not in proc.stderr and "compiling" not in proc.stderr


def test_sample_script_carries_memory_across_prompts(finished, compile_cache):
  workdir, _ = finished
  proc = run([sys.executable, str(ROOT / "launch" / "sample.py"), f"--workdir={workdir}",
              "--prompt=ROMEO:", "--prompt=JULIET:", "--num_tokens=6"],
             subprocess_env(compile_cache))
  out = proc.stdout.splitlines()
  assert out[0] == f"# transformer_pp from {workdir}", proc.stdout
  assert proc.stdout.count("ROMEO:") == 1 and "\nJULIET:" in proc.stdout
  assert "-" * 40 in out


def test_readme_snippet_runs_as_written(finished, capsys):
  workdir, _ = finished
  readme = (ROOT / "README.md").read_text()
  (snippet,) = re.findall(r"## Models\n.*?```python\n(.*?)```", readme, re.S)
  assert 'load_trained("/tmp/hope_tiny")' in snippet  # the workdir of README command 1
  exec(snippet.replace("/tmp/hope_tiny", str(workdir)), {})  # pylint: disable=exec-used
  printed = capsys.readouterr().out
  assert printed.startswith("JULIET:") and len(printed) > len("JULIET:")


def test_ctrl_c_saves_like_sigterm(tmp_path, compile_cache):
  workdir = tmp_path / "run"
  cmd = launch_cmd(CONFIG, workdir, "--config.model.n_layers=1",
                   "--config.optimizer.decay_steps=100", "--config.train.steps=100000",
                   "--config.train.log_every=1", "--config.train.eval_batches=0",
                   "--config.train.checkpoint_every=0")
  proc = subprocess.Popen(cmd, env=subprocess_env(compile_cache), cwd=str(ROOT),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics_file = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  try:
    while time.time() < deadline and proc.poll() is None:
      if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 3:
        break
      time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-3000:]
  assert "Ctrl-C: saving a checkpoint at the next step boundary" in err
  saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(saved) == 1 and f"stopped at step {saved[0]} (checkpoint saved)" in err
  assert "Traceback" not in err


def test_second_ctrl_c_aborts_at_once():
  p = loop._Preemption(install=False)  # pylint: disable=protected-access
  p._handler(signal.SIGINT, None)  # pylint: disable=protected-access
  assert p.flag
  with pytest.raises(KeyboardInterrupt):
    p._handler(signal.SIGINT, None)  # pylint: disable=protected-access
  signal.signal(signal.SIGINT, signal.default_int_handler)
