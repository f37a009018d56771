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
"""Config validation (every bad case, before compilation), experiment configs, optimizers,
sharding rules and the TensorBoard writer. No training here: everything is milliseconds."""

import importlib.util
import os
import re
from pathlib import Path

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from nl_jax.models import registry
from nl_jax.optim import partition
from nl_jax.train import config as config_lib
from nl_jax.train import loop, optimizers
from nl_jax.train import mesh as mesh_lib
from nl_jax.train import metrics as metrics_lib
from tests.train.conftest import ROOT, tiny_config

CONFIG_DIR = ROOT / "experiments" / "configs"
MODELS = ("hope", "hope_attention", "titans", "transformer")
SIZES = ("tiny", "760m", "1_3b")


def _load_config_file(name: str, arg=None):
  spec = importlib.util.spec_from_file_location(f"cfg_{name[:-3]}", CONFIG_DIR / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, module.get_config(arg)


def test_the_configs_are_one_table():
  """Every training config is an entry of lm.py's table; nothing else has a get_config."""
  files = sorted(p.name for p in CONFIG_DIR.glob("*.py") if "def get_config" in p.read_text())
  assert files == ["lm.py"]
  module, default = _load_config_file("lm.py")
  assert "--config=experiments/configs/lm.py:hope,tiny" in module.__doc__  # the command
  assert (default.model_name, default.model_preset) == ("hope", "tiny")
  named = _load_config_file("lm.py", "model=titans,size=760m,mode=smoke")[1]
  assert named.to_dict() == _load_config_file("lm.py", "titans,760m,smoke")[1].to_dict()
  for bad, match in (("hope,tiny,smok", r"mode='smok' is not one of \['smoke', 'files'\]"),
                     ("hopee", r"model='hopee' is not one of"),
                     ("hope,7b", r"size='7b'"), ("colour=red", r"unknown key 'colour'"),
                     ("hope,tiny,smoke,x", "too many entries"),
                     ("hope,tiny,files,smoke", "mode given twice")):
    with pytest.raises(ValueError, match=match):
      _load_config_file("lm.py", bad)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("size", SIZES)
def test_experiment_config_loads_and_validates(model, size):
  _, config = _load_config_file("lm.py", f"{model},{size}")
  assert config.model_name == ("transformer_pp" if model == "transformer" else model)
  resolved = config_lib.validate(config, num_devices=8, process_count=1)
  assert resolved.mesh_shape["data"] * resolved.mesh_shape["fsdp"] * (
      resolved.mesh_shape["tensor"]) == 8
  assert resolved.data_config.alignment % resolved.model_config.alignment == 0
  if size == "tiny":
    _, smoke = _load_config_file("lm.py", f"{model},{size},smoke")
    config_lib.validate(smoke, num_devices=8, process_count=1)
  else:
    assert config.model_preset == size
    assert config.model.dtype == "bfloat16" and config.model.remat and config.model.scan_layers
    if model == "hope":  # the paper-scale Hope is the ablations' reference Hope
      assert (config.model.smt.momentum, config.model.smt.adaptive_q) == (True, True)


def test_files_arg_reads_data_paths_from_environment(tmp_path, monkeypatch):
  (tmp_path / "a.parquet").write_bytes(b"")
  monkeypatch.setenv("NL_JAX_TRAIN_FILES", str(tmp_path / "*.parquet"))
  monkeypatch.setenv("NL_JAX_EVAL_FILES", str(tmp_path / "a.parquet"))
  _, config = _load_config_file("lm.py", "transformer,760m,files")
  assert config.data.name == "parquet" and config.data.paths == (str(tmp_path / "*.parquet"),)
  monkeypatch.delenv("NL_JAX_TRAIN_FILES")
  with pytest.raises(ValueError, match="NL_JAX_TRAIN_FILES"):
    _load_config_file("lm.py", "transformer,760m,files")


def _bad(config, *, devices=8, processes=1):
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.validate(config, num_devices=devices, process_count=processes)
  return str(info.value)


def _from_dict(config, edit):
  d = config.to_dict()
  edit(d)
  return ml_collections.ConfigDict(d)


def test_bad_config_unknown_and_missing_keys():
  c = tiny_config()
  msg = _bad(_from_dict(c, lambda d: d.update(foo=1)))
  assert "field 'foo'" in msg and "unknown top-level key" in msg
  msg = _bad(_from_dict(c, lambda d: d["train"].update(stepz=3)))
  assert "'train.stepz'" in msg and "valid keys" in msg
  msg = _bad(_from_dict(c, lambda d: d["optimizer"].pop("learning_rate")))
  assert "'optimizer.learning_rate'" in msg and "missing" in msg
  msg = _bad(_from_dict(c, lambda d: d["model"].update(d_modle=64)))
  assert "'model'" in msg and "d_modle" in msg
  msg = _bad(_from_dict(c, lambda d: d["data"].update(seq_lenn=64)))
  assert "seq_lenn" in msg


def test_bad_nested_model_fields_name_their_dotted_path():
  c = config_lib.default_config("hope", "tiny")
  msg = _bad(_from_dict(c, lambda d: d["model"]["smt"].update(chunk_sise=8)))
  assert "field 'model'" in msg and "['smt.chunk_sise']" in msg
  msg = _bad(_from_dict(c, lambda d: d["model"]["cms"].update(variant="chain")))
  assert "field 'model'" in msg and "cms: CMSConfig.variant='chain' is not one of" in msg
  msg = _bad(_from_dict(c, lambda d: d["model"]["smt"].update(eta_max="big")))
  assert "HopeConfig.smt.eta_max: expected float" in msg


def test_a_run_saved_with_flat_hope_fields_resumes_unchanged():
  """config.json of a Hope run saved before the layer configs were nested (flat names) reads as
  the same config (no change to refuse); a real change is listed by its dotted name."""
  from nl_jax import config_tree  # noqa: PLC0415
  from nl_jax.models import hope  # noqa: PLC0415
  from nl_jax.train import workdir  # noqa: PLC0415

  config = config_lib.default_config("hope", "tiny")
  saved = workdir.config_as_json(config)
  old_name = {new: old for old, new in hope.HopeConfig.RENAMED.items()}
  saved["model"] = {old_name.get(k, k): v
                    for k, v in config_tree.flatten(saved["model"]).items()}
  assert "smt_chunk_size" in saved["model"] and "smt" not in saved["model"]
  assert workdir.config_changes(saved, config) == []
  config.model.smt.chunk_size = 16
  assert workdir.config_changes(saved, config) == [("model.smt.chunk_size", 8, 16)]


def test_bad_config_wrong_types():
  c = tiny_config()
  msg = _bad(_from_dict(c, lambda d: d["train"].update(steps="abc")))
  assert "'train.steps'" in msg and "expected int" in msg
  msg = _bad(_from_dict(c, lambda d: d["optimizer"].update(learning_rate="fast")))
  assert "'optimizer.learning_rate'" in msg and "expected float" in msg
  msg = _bad(_from_dict(c, lambda d: d["mesh"].update(data=True)))
  assert "'mesh.data'" in msg


def test_bad_config_values_name_field_and_fix():
  c = tiny_config()
  cases = [
      (lambda d: d.update(model_name="gpt"), "'model_name'", "choose one of"),
      (lambda d: d["optimizer"].update(name="adamz"), "'optimizer.name'", "choose one of"),
      (lambda d: d["optimizer"].update(schedule="cosine"), "'optimizer.schedule'",
       "warmup_cosine"),
      (lambda d: d["optimizer"].update(warmup_steps=99), "'optimizer.warmup_steps'",
       "train.steps"),
      (lambda d: d["train"].update(nan_policy="ignore"), "'train.nan_policy'", "skip"),
      (lambda d: d["model"].update(vocab_size=100), "'model.vocab_size'",
       "--config.model.vocab_size=259"),
      (lambda d: d["sharding"].update(param_rules=(("(", ("embed",)),)),
       "'sharding.param_rules[0]'", "bad regex"),
      (lambda d: d["sharding"].update(param_rules=((".*", ("embd",)),)),
       "'sharding.param_rules[0]'", "add them there"),
  ]
  for edit, field, fix in cases:
    msg = _bad(_from_dict(c, edit))
    assert field in msg and fix in msg, msg


def test_bad_config_mesh_vs_devices():
  c = tiny_config()
  c.mesh.update(data=3, fsdp=1, tensor=1)
  msg = _bad(c)
  assert "'mesh'" in msg and "8 devices" in msg and "-1" in msg
  c.mesh.update(data=-1, fsdp=-1)
  assert "at most one" in _bad(c)
  c.mesh.update(data=-1, fsdp=3)
  msg = _bad(c)
  assert "'mesh.data'" in msg and "divide" in msg


def test_bad_config_batch_not_divisible_by_data_parallelism():
  c = tiny_config(batch_size=12)
  msg = _bad(c)
  assert "'data.batch_size'" in msg and "mesh.data*mesh.fsdp = 8" in msg
  # ... nor by the processes reading it.
  c = tiny_config(batch_size=9)
  c.mesh.update(data=1, tensor=-1)
  msg = _bad(c, processes=2)
  assert "'data.batch_size'" in msg and "processes" in msg


def test_bad_config_seq_len_vs_chunk_size_and_alignment():
  c = config_lib.default_config("titans", "tiny", seq_len=40, batch_size=8)
  msg = _bad(c)
  # The chunk field is named (issue 20), with the sequence length it must divide.
  assert "'model.titans.chunk_size'" in msg and "[16] do not divide data.seq_len=40" in msg
  c = config_lib.default_config("titans", "tiny", seq_len=64, batch_size=8)
  c.data.alignment = 4
  msg = _bad(c)
  assert "'data.alignment'" in msg and "alignment=0" in msg
  c.data.alignment = 0
  resolved = config_lib.validate(c, num_devices=8, process_count=1)
  assert resolved.data_config.alignment == resolved.model_config.alignment == 16


def test_bad_config_fails_before_any_work(tmp_path):
  c = tiny_config(batch_size=12)
  with pytest.raises(config_lib.ConfigError, match="data.batch_size"):
    loop.train_and_evaluate(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("name", config_lib.OPTIMIZERS)
def test_every_optimizer_builds_and_steps(name):
  c = tiny_config()
  c.optimizer.name = name
  c.optimizer.schedule = "constant"
  tx, _ = optimizers.make_optimizer(c.optimizer, total_steps=10)
  params = {"w": jnp.linspace(-1.0, 1.0, 32).reshape(8, 4), "scale": jnp.ones((4,))}

  @jax.jit
  def step(params):
    grads = jax.tree.map(lambda p: 0.1 * jnp.sin(3.0 * p) + 0.05, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates)

  new = step(params)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new))
  assert float(jnp.abs(new["w"] - params["w"]).max()) > 0


def test_schedules():
  c = tiny_config().optimizer
  for name in config_lib.SCHEDULES:
    c.schedule = name
    schedule = optimizers.make_schedule(c, total_steps=100)
    peak = float(schedule(2))  # warmup_steps = 2
    assert peak == pytest.approx(3e-3), name
    if name.startswith("warmup"):
      assert float(schedule(0)) == 0.0 if name != "warmup_rsqrt" else float(schedule(0)) > 0
    if name in ("warmup_cosine", "warmup_linear"):
      assert float(schedule(100)) == pytest.approx(3e-4)  # end_lr_fraction 0.1 of decay 100


def test_optimizer_kwargs_are_checked():
  c = tiny_config()
  c.optimizer.kwargs = ml_collections.ConfigDict({"nesterovv": True})
  with pytest.raises(ValueError, match="nesterovv"):
    optimizers.make_optimizer(c.optimizer, total_steps=10)


def test_sharding_rules_map_paths_to_mesh_axes():
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})

  def sds(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)

  params = {"embed": {"embedding": sds(259, 64)},
            "blocks": {"0": {"attn": {"wq": sds(64, 4, 16), "wo": sds(4, 16, 64)},
                             "mlp": {"w_up": sds(64, 192), "w_down": sds(192, 64)},
                             "norm": {"scale": sds(64)}}}}
  sh = mesh_lib.param_shardings(params, mesh, config_lib.default_config(
      "transformer_pp").sharding)
  blk = sh["blocks"]["0"]
  P = jax.sharding.PartitionSpec
  assert sh["embed"]["embedding"].spec == P(None, "fsdp")  # 259 is not divisible by 2
  assert blk["attn"]["wq"].spec == P("fsdp", "tensor", None)
  assert blk["attn"]["wo"].spec == P("tensor", None, "fsdp")
  assert blk["mlp"]["w_up"].spec == P("fsdp", "tensor")
  assert blk["mlp"]["w_down"].spec == P("tensor", "fsdp")
  assert blk["norm"]["scale"].spec == P()
  # Optimizer state mirrors the parameters; scalars are replicated.
  opt = jax.eval_shape(optax.adamw(1e-3).init, params)
  opt_sh = mesh_lib.mirror_shardings(opt, params, sh, mesh)
  assert opt_sh[0].mu["blocks"]["0"]["attn"]["wq"].spec == P("fsdp", "tensor", None)
  assert opt_sh[0].count.spec == P()
  # Memory state follows the batch.
  mem = {"m": sds(8, 4, 16)}
  mem_sh = mesh_lib.memory_shardings(mem, mesh, config_lib.default_config(
      "transformer_pp").sharding)
  assert mem_sh["m"].spec == P(("data", "fsdp"), None, None)


@pytest.mark.parametrize("model_name", ["hope", "titans"])
def test_memory_initial_states_are_sharded_and_stay_with_adamw(model_name):
  """The per-head initial states of the MLP fast memories (self-modifying Titans `*_init/w1,
  w2`, Titans `memory_init_w1, w2`) shard their hidden axis over fsdp (they were replicated, with
  their Adam moments, on every device) and are still no projection for M3 / Muon / DGD."""
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  model = nnx.eval_shape(lambda: registry.build_model(
      registry.model_config(model_name, "tiny"), rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  sharding = config_lib.default_config(model_name).sharding
  sh = mesh_lib.param_shardings(params, mesh, sharding)
  assignments = partition.assign(params, sharding.param_rules)
  P = jax.sharding.PartitionSpec
  seen = 0
  for (path, s), a in zip(jax.tree_util.tree_leaves_with_path(sh), jax.tree.leaves(
      assignments, is_leaf=lambda x: isinstance(x, partition.Assignment)), strict=True):
    name = partition.path_str(path)
    if not re.search(r"_init(/|_)w[12]$", name):
      continue
    seen += 1
    hidden_axis = 2 if name.endswith("w1") else 1
    want = [None, None, None]
    want[0] = "tensor"  # 4 heads over tensor=2
    want[hidden_axis] = "fsdp"
    assert s.spec == P(*want), (name, s.spec)
    assert a.kind == "other" and a.dims is None and a.reason == "per-head memory initial state"
  assert seen == (20 if model_name == "hope" else 4)


def test_tensorboard_event_file_round_trip(tmp_path):
  pytest.importorskip("tensorboardX")
  writer = metrics_lib.TensorBoardWriter(str(tmp_path))
  writer.scalars(7, {"train/loss": 2.5, "train/lr": 1e-3})
  writer.text(7, "samples", "ROMEO: hello")
  writer.close()
  events = metrics_lib.read_events(writer.path)
  assert events[0][0] == 0 and not events[0][1]  # the file-version event
  scalars = {k: v for step, s, _ in events if step == 7 for k, v in s.items()}
  assert scalars == pytest.approx({"train/loss": 2.5, "train/lr": 1e-3})
  assert any(step == 7 and "ROMEO: hello" in t.get("samples/text_summary", "")
             for step, _, t in events)
  # A flipped byte is detected (google-crc32c behind the TFRecord framing).
  data = bytearray(Path(writer.path).read_bytes())
  data[-6] ^= 1
  Path(writer.path).write_bytes(bytes(data))
  with pytest.raises(ValueError, match="CRC"):
    metrics_lib.read_event_scalars(writer.path)


def test_tfrecord_crc_is_the_maintained_one():
  from nl_jax.data import tfrecord  # pylint: disable=g-import-not-at-top

  google_crc32c = pytest.importorskip("google_crc32c")
  crc = 0xE3069283  # the CRC-32C check value of b"123456789" (RFC 3720)
  assert google_crc32c.value(b"123456789") == crc
  assert tfrecord.masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & (
      0xFFFFFFFF)
  assert not hasattr(metrics_lib, "crc32c")  # no hand-written copy left


def test_mfu_and_flops_estimate():
  flops = metrics_lib.model_flops_per_token(1000, 200, n_layers=2, d_model=8, seq_len=16)
  assert flops == 6 * 800 + 6 * 2 * 16 * 8
  assert metrics_lib.peak_flops("TPU v5p", 0.0, config_lib.PEAK_FLOPS) == 459e12
  assert metrics_lib.peak_flops("cpu", 0.0, config_lib.PEAK_FLOPS) == 0.0
  assert metrics_lib.peak_flops("cpu", 1e12, config_lib.PEAK_FLOPS) == 1e12
  np.testing.assert_allclose(
      float(loop.masked_cross_entropy(jnp.zeros((1, 2, 4)), jnp.zeros((1, 2), jnp.int32),
                                      jnp.array([[1.0, 0.0]]))[0]), np.log(4), rtol=1e-6)
