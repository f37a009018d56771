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
"""Training configs: shared defaults (`default_config`) and validation before compilation.

A training config is an ``ml_collections.ConfigDict`` with these sections::

  model_name  "hope" | "hope_attention" | "titans" | "transformer_pp"
  model       every field of the model's config dataclass (``registry.model_config``), its
              layers' configs nested (``model.smt.chunk_size``; nl_jax.config_tree)
  data        `nl_jax.data.DataConfig` fields (``batch_size`` is global; ``alignment`` 0 =
              the model's ``alignment``)
  optimizer   name, learning rate, schedule, clipping, weight decay, extra kwargs
  mesh        per-axis parallelism ``data``, ``fsdp``, ``tensor`` (one may be -1 = the rest)
  sharding    logical axis rules: parameter-path regex -> logical axes -> mesh axes
  train       steps, logging, evaluation, checkpointing, NaN policy

`validate` checks all of it (unknown keys, wrong types, sequence length vs the model's chunk
sizes, mesh vs device count, batch vs data parallelism, data alignment vs the model) before
anything is compiled, and raises `ConfigError` naming each bad field and its fix.
"""

import dataclasses
import re
import typing
from typing import Any

import ml_collections

from nl_jax import config_tree
# The name lists are owned by the registries that build the named things; re-exported here.
from nl_jax.models.registry import MODEL_NAMES
from nl_jax.train.optimizers import OPTIMIZERS, SCHEDULES

NAN_POLICIES = ("raise", "skip")
MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis rules (MaxText style). A parameter's path (e.g. "blocks/0/attn/wq/kernel")
# is matched against PARAM_RULES in order; the first regex that matches AND whose logical
# axes have the parameter's rank wins. Logical axes map to mesh axes by LOGICAL_AXES; a dim
# that is not divisible by its mesh axes is replicated (logged), so every preset shards.
PARAM_RULES = (
    (r"(^|/)embed(/|$)", ("vocab", "embed")),
    (r"(^|/)lm_head(/|$)", ("embed", "vocab")),
    (r"(^|/)(wq|wk|wv)(/|$)", ("embed", "heads")),
    (r"(^|/)(wq|wk|wv)(/|$)", ("embed", "heads", "head_dim")),
    (r"(^|/)wo(/|$)", ("heads", "embed")),
    (r"(^|/)wo(/|$)", ("heads", "head_dim", "embed")),
    (r"(^|/)(w_gate|w_up)(/|$)", ("embed", "mlp")),
    (r"(^|/)w_down(/|$)", ("mlp", "embed")),
    # Gates, convs and norms get their own logical axes so that the optimizers' matrix rules
    # (`nl_jax.optim.partition`) do not take them for projections.
    (r"(^|/)wg(/|$)", ("embed", "heads")),
    (r"(^|/)w_gate(/|$)", ("embed", "heads", "head_dim")),
    (r"(^|/)(w_gates)(/|$)", ("embed", "gates", "heads")),
    (r"(^|/)(w_mu)(/|$)", ("embed", "gates")),
    (r"(^|/)(b_gates|gate_bias)(/|$)", ("gates", "heads")),
    (r"conv/kernel$", ("conv_width", "mlp")),
    (r"(^|/)norm_scale$", ("norm", "embed")),
    (r"(^|/)out_norm_scale$", ("heads", "norm")),
    # Per-head initial states of the MLP fast memories (self-modifying Titans `<name>_init/w1`,
    # Titans `memory_init_w1`; MLPWeights' layout w1 [heads, out, hidden], w2 [heads, hidden,
    # in]): sharded over fsdp by their hidden axis, like every other weight, instead of
    # replicated with their Adam moments (33.6M parameters at hope_760m).
    (r"(^|/)[^/]*_init(/|_)w1$", ("heads", "head_dim", "memory_hidden")),
    (r"(^|/)[^/]*_init(/|_)w2$", ("heads", "memory_hidden", "head_dim")),
    (r".*", ("embed", "mlp")),
)
LOGICAL_AXES = (
    ("batch", ("data", "fsdp")),
    ("vocab", ("tensor",)),
    ("embed", ("fsdp",)),
    ("heads", ("tensor",)),
    ("head_dim", ()),
    ("mlp", ("tensor",)),
    ("memory_hidden", ("fsdp",)),
    ("gates", ()),
    ("conv_width", ()),
    ("norm", ()),
    # The leading axis of blocks stacked for scan_layers (each device holds every layer).
    ("layers", ()),
)
# Memory state: every leaf has a leading batch axis (the interface), sharded like the batch.
MEMORY_RULES = ((r".*", ("batch",)),)

# Peak dense bf16 FLOP/s per device for the MFU estimate (0 = unknown: MFU not reported).
PEAK_FLOPS = (
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5p", 459e12),
    ("TPU v5", 459e12), ("TPU v6", 918e12), ("H100", 989e12), ("H200", 989e12),
    ("A100", 312e12), ("B200", 2250e12),
)


class ConfigError(ValueError):
  """An invalid training config; the message names every bad field and its fix."""


def model_defaults(model_name: str, preset: str = "tiny", **overrides) -> dict[str, Any]:
  """The model config of ``registry.model_config(model_name, preset)`` as plain nested dicts
  (nl_jax.config_tree.to_dict: a layer config without the fields its model sets)."""
  from nl_jax.models import registry  # pylint: disable=g-import-not-at-top

  return config_tree.to_dict(registry.model_config(model_name, preset, **overrides))


def to_plain(value):
  """JSON-loaded values back to config values (lists -> tuples, recursively)."""
  if isinstance(value, dict):
    return {k: to_plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(to_plain(v) for v in value)
  return value


def _typed_none_fields(model_name: str, fields: dict) -> ml_collections.ConfigDict:
  """Model fields (at any depth) that default to None become typed references, so that the
  command line can set them."""
  from nl_jax.models import registry  # pylint: disable=g-import-not-at-top

  types_by_path = config_tree.field_paths(registry.config_class(model_name))
  flat = config_tree.flatten(fields)
  for path, value in flat.items():
    if value is None:
      options = [a for a in typing.get_args(types_by_path.get(path))
                 if a is not type(None)]
      base = typing.get_origin(options[0]) or options[0] if options else object
      if base in (int, float, str, bool, tuple):
        flat[path] = ml_collections.FieldReference(None, field_type=base)
  return ml_collections.ConfigDict(config_tree.unflatten(flat))


def default_config(model_name: str = "hope", preset: str = "tiny", *,
                   model_overrides: dict | None = None, **data_overrides
                   ) -> ml_collections.ConfigDict:
  """Shared defaults of every experiment config (see module docstring).

  Args:
    model_name: one of `MODEL_NAMES`.
    preset: the registry preset ("tiny", "small", "760m", "1_3b").
    model_overrides: model config fields to change.
    **data_overrides: `nl_jax.data.DataConfig` fields (e.g. ``seq_len``, ``batch_size``).
  """
  from nl_jax import data  # pylint: disable=g-import-not-at-top

  c = ml_collections.ConfigDict()
  c.model_name = model_name
  c.model_preset = preset
  c.model = _typed_none_fields(model_name, model_defaults(model_name, preset,
                                                          **(model_overrides or {})))
  data_fields = {"seq_len": 128, "batch_size": 8, "eval_batch_size": 8, "alignment": 0,
                 "num_threads": 1}
  data_fields.update(data_overrides)
  # alignment 0 ("the model's") is resolved by the trainer; DataConfig itself needs >= 1.
  alignment = data_fields.pop("alignment")
  c.data = data.default_config_dict(**data_fields)
  c.data.alignment = alignment
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw",
      learning_rate=3e-3,
      schedule="warmup_cosine",
      warmup_steps=20,
      decay_steps=0,          # 0 = train.steps
      end_lr_fraction=0.1,
      grad_clip=1.0,          # 0 = off
      weight_decay=0.1,       # applied to parameters of rank >= 2 only
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      momentum=0.9,           # sgd
      kwargs=ml_collections.ConfigDict(),  # extra keyword arguments of the optimizer
  ))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding = ml_collections.ConfigDict(dict(
      param_rules=PARAM_RULES, logical_axes=LOGICAL_AXES, memory_rules=MEMORY_RULES))
  c.train = ml_collections.ConfigDict(dict(
      steps=300,
      seed=0,
      log_every=10,
      eval_every=100,         # 0 = only at the end
      eval_batches=4,         # 0 = no held-out evaluation
      checkpoint_every=100,   # 0 = only at the end and on preemption
      keep_checkpoints=3,
      async_checkpointing=True,
      nan_policy="raise",     # or "skip": drop the update, up to nan_skip_budget steps
      nan_skip_budget=10,
      peak_flops_per_device=0.0,  # 0 = look up the device kind (PEAK_FLOPS); CPU: unknown
      tensorboard=True,
      # Every held-out eval prints (and logs) this many generated tokens after sample_prompt
      # (greedy, carried memory); 0 = no samples.
      sample_tokens=48,
      sample_prompt="ROMEO:\n",
      # Warn once per layer and quantity when an in-context memory statistic (nl_jax.train.
      # guards) exceeds this factor times its first logged value.
      growth_warn_factor=4.0,
      # Resume with changed steps / LR schedule / logging / eval / checkpointing fields
      # (`nl_jax.train.workdir.MAY_CHANGE_FIELDS`); other changes are always refused.
      allow_config_changes=False,
  ))
  return c


# Validation ---------------------------------------------------------------------------


def _schema() -> dict[str, dict[str, Any]]:
  """Types of the fixed sections (from the defaults, which need no model registry)."""
  opt = dict(name=str, learning_rate=float, schedule=str, warmup_steps=int, decay_steps=int,
             end_lr_fraction=float, grad_clip=float, weight_decay=float, b1=float, b2=float,
             eps=float, momentum=float, kwargs=dict)
  train = dict(steps=int, seed=int, log_every=int, eval_every=int, eval_batches=int,
               checkpoint_every=int, keep_checkpoints=int, async_checkpointing=bool,
               nan_policy=str, nan_skip_budget=int, peak_flops_per_device=float,
               tensorboard=bool, allow_config_changes=bool, sample_tokens=int,
               sample_prompt=str, growth_warn_factor=float)
  return {"optimizer": opt, "train": train, "mesh": dict(data=int, fsdp=int, tensor=int),
          "sharding": dict(param_rules=tuple, logical_axes=tuple, memory_rules=tuple)}


TOP_LEVEL = ("model_name", "model_preset", "model", "data", "optimizer", "mesh", "sharding",
             "train")


def _type_ok(value, expected) -> bool:
  if expected is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if expected is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if expected is tuple:
    return isinstance(value, (tuple, list))
  if expected is dict:
    return isinstance(value, (dict, ml_collections.ConfigDict))
  return isinstance(value, expected)


@dataclasses.dataclass(frozen=True)
class Resolved:
  """What validation derived: the model config, mesh shape and resolved data config."""

  model_config: Any
  mesh_shape: dict[str, int]
  data_config: Any
  alignment: int


def resolve_mesh_shape(mesh_cfg: Any, num_devices: int) -> dict[str, int]:
  """Per-axis sizes with the -1 axis filled in; raises `ConfigError` naming the field."""
  sizes = {a: mesh_cfg[a] for a in MESH_AXES}
  errors = []
  for a, v in sizes.items():
    if not _type_ok(v, int) or (v < 1 and v != -1):
      errors.append(f"field 'mesh.{a}': must be an int >= 1 or -1 (= the remaining "
                    f"devices), got {v!r}")
  if errors:
    raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
  free = [a for a, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ConfigError(f"invalid config:\n  field 'mesh': axes {free} are all -1; at most one "
                      "axis may be -1, set the others to explicit sizes")
  fixed = 1
  for v in sizes.values():
    if v != -1:
      fixed *= v
  if free:
    if num_devices % fixed:
      raise ConfigError(
          f"invalid config:\n  field 'mesh.{free[0]}': the other axes use {fixed} devices, "
          f"which does not divide the {num_devices} devices; make the product of the fixed "
          f"axes divide {num_devices}")
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ConfigError(
        f"invalid config:\n  field 'mesh': data*fsdp*tensor = "
        f"{sizes['data']}*{sizes['fsdp']}*{sizes['tensor']} = {fixed} but there are "
        f"{num_devices} devices; set one axis to -1 or make the product {num_devices}")
  return sizes


# Positions are float32 in RoPE: integers above 2**24 are no longer exact.
MAX_SEQ_LEN = 1 << 24


def _chunk_field_errors(model_cfg: Any, seq_len: int) -> list[tuple[str, str]]:
  """``(model.<dotted field>, message)`` for every chunk-size field (at any depth) that does
  not divide seq_len."""
  if model_cfg is None or not dataclasses.is_dataclass(model_cfg):
    return []
  out = []
  for path, value in config_tree.flatten(config_tree.to_dict(model_cfg)).items():
    if "chunk_size" not in path.rsplit(".", 1)[-1]:
      continue
    values = value if isinstance(value, (tuple, list)) else (value,)
    bad_values = [v for v in values if isinstance(v, int) and v > 0 and seq_len % v]
    if bad_values:
      out.append((f"model.{path}", f"{value!r}: {bad_values} do not divide data.seq_len="
                  f"{seq_len} (chunks must tile the sequence); use divisors of {seq_len} or "
                  "change data.seq_len"))
  return out


def _device_memory(device) -> int:
  """Bytes one device may use (accelerators: its limit; CPU: RAM / local devices); 0 = ?"""
  import os  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  try:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return 0
  return int(ram // max(1, jax.local_device_count()))


def _step_memory_lower_bound(model_cfg: Any, data_cfg: Any, mesh_shape: dict) -> int:
  """A lower bound on one device's train-step memory: float32 logits + their gradient and
  the residual stream kept per layer (the real step needs more, never less)."""
  rows = max(1, data_cfg.batch_size // max(1, mesh_shape["data"] * mesh_shape["fsdp"]))
  tokens = rows * data_cfg.seq_len
  vocab = int(getattr(model_cfg, "vocab_size", 0)) // max(1, mesh_shape["tensor"])
  d_model = int(getattr(model_cfg, "d_model", 0))
  n_layers = int(getattr(model_cfg, "n_layers", 0))
  return 2 * tokens * vocab * 4 + tokens * d_model * n_layers * 4


def check_step_memory(resolved: Resolved, device) -> None:
  """Refuses a ``data.seq_len`` whose train step cannot fit on ``device`` (a real run's).

  Compares `_step_memory_lower_bound` (float32 logits and their gradient plus one residual
  stream per layer, for this device's rows) with the device's memory limit (CPU: host RAM
  shared by the local devices). Not part of `validate`, which also serves ahead-of-time
  compilation for other hardware.

  Raises:
    ConfigError: naming ``data.seq_len``, the bound and the memory available.
  """
  data_cfg, mesh_shape = resolved.data_config, resolved.mesh_shape
  need = _step_memory_lower_bound(resolved.model_config, data_cfg, mesh_shape)
  have = _device_memory(device)
  if have and need > have:
    rows = data_cfg.batch_size // (mesh_shape["data"] * mesh_shape["fsdp"])
    raise ConfigError(
        f"invalid config:\n  field 'data.seq_len': {data_cfg.seq_len} needs at least "
        f"{need / 2**30:.1f} GiB per device for one train step (float32 logits, their "
        f"gradient and the residual streams of {rows} rows), more than the "
        f"{have / 2**30:.1f} GiB of {device.device_kind}; lower data.seq_len or "
        "data.batch_size, or add devices")


class _Errors:
  """Collects every bad field of a config, then raises them together (ConfigError)."""

  def __init__(self):
    self.lines: list[str] = []

  def bad(self, field, message):
    self.lines.append(f"field {field!r}: {message}")

  def fail(self):
    if self.lines:
      raise ConfigError("invalid config:\n  " + "\n  ".join(self.lines))


def _check_keys(config: Any, err: _Errors) -> None:
  """Top-level keys and every section's keys and types (_schema)."""
  keys = set(config.keys())
  for k in sorted(keys - set(TOP_LEVEL)):
    err.bad(k, f"unknown top-level key; valid keys: {list(TOP_LEVEL)}")
  for k in TOP_LEVEL:
    if k not in keys:
      err.bad(k, "missing; start from nl_jax.train.config.default_config()")
  err.fail()
  for section, fields in _schema().items():
    given = config[section]
    for k in sorted(set(given.keys()) - set(fields)):
      err.bad(f"{section}.{k}", f"unknown key; valid keys: {sorted(fields)}")
    for k, typ in fields.items():
      if k not in given:
        err.bad(f"{section}.{k}", "missing; start from nl_jax.train.config.default_config()")
      elif not _type_ok(given[k], typ):
        err.bad(f"{section}.{k}", f"expected {typ.__name__}, got {type(given[k]).__name__} "
                f"{given[k]!r}")
  err.fail()


def _check_model(config: Any, err: _Errors):
  """The model's typed config (None when it is invalid)."""
  if config.model_name not in MODEL_NAMES:
    err.bad("model_name", f"unknown model {config.model_name!r}; choose one of "
            f"{list(MODEL_NAMES)}")
    return None
  from nl_jax.models import registry  # pylint: disable=g-import-not-at-top

  try:
    return registry.config_from_dict(config.model_name, config.model.to_dict())
  except (ValueError, TypeError) as e:
    err.bad("model", str(e))
    return None


def _check_optimizer(config: Any, model_cfg: Any, err: _Errors) -> None:
  opt = config.optimizer
  if opt.name not in OPTIMIZERS:
    err.bad("optimizer.name", f"unknown optimizer {opt.name!r}; choose one of "
            f"{list(OPTIMIZERS)}")
  if opt.name == "dgd" and getattr(model_cfg, "scan_layers", False):
    err.bad("model.scan_layers", "optimizer.name='dgd' needs the input statistics of each "
            "layer, and stacked blocks share one probe per weight; set "
            "--config.model.scan_layers=False")
  if opt.schedule not in SCHEDULES:
    err.bad("optimizer.schedule", f"unknown schedule {opt.schedule!r}; choose one of "
            f"{list(SCHEDULES)}")
  if opt.learning_rate <= 0:
    err.bad("optimizer.learning_rate", f"must be > 0, got {opt.learning_rate}")
  if opt.warmup_steps < 0 or opt.warmup_steps > config.train.steps:
    err.bad("optimizer.warmup_steps", f"must be in [0, train.steps={config.train.steps}], "
            f"got {opt.warmup_steps}")
  if opt.decay_steps < 0:
    err.bad("optimizer.decay_steps", f"must be >= 0 (0 = train.steps), got {opt.decay_steps}")
  if not 0 <= opt.end_lr_fraction <= 1:
    err.bad("optimizer.end_lr_fraction", f"must be in [0, 1], got {opt.end_lr_fraction}")
  for k in ("grad_clip", "weight_decay"):
    if opt[k] < 0:
      err.bad(f"optimizer.{k}", f"must be >= 0 (0 = off), got {opt[k]}")


def _check_train(t: Any, err: _Errors) -> None:
  for k in ("steps", "log_every", "keep_checkpoints"):
    if t[k] < 1:
      err.bad(f"train.{k}", f"must be >= 1, got {t[k]}")
  for k in ("eval_every", "eval_batches", "checkpoint_every", "nan_skip_budget",
            "sample_tokens"):
    if t[k] < 0:
      err.bad(f"train.{k}", f"must be >= 0, got {t[k]}")
  if t.nan_policy not in NAN_POLICIES:
    err.bad("train.nan_policy", f"must be one of {list(NAN_POLICIES)}, got {t.nan_policy!r}")
  if not t.get("growth_warn_factor", 4.0) > 1.0:
    err.bad("train.growth_warn_factor", f"must be > 1, got {t.growth_warn_factor}")


def _check_sharding(sharding: Any, err: _Errors) -> None:
  logical = {}
  for i, rule in enumerate(sharding.logical_axes):
    if len(rule) != 2 or not isinstance(rule[0], str) or any(
        a not in MESH_AXES for a in rule[1]):
      err.bad(f"sharding.logical_axes[{i}]", f"expected (logical name, tuple of mesh axes "
              f"from {list(MESH_AXES)}), got {rule!r}")
    else:
      logical[rule[0]] = tuple(rule[1])
  for field in ("param_rules", "memory_rules"):
    for i, rule in enumerate(sharding[field]):
      if len(rule) != 2:
        err.bad(f"sharding.{field}[{i}]", f"expected (regex, tuple of logical axes), got "
                f"{rule!r}")
        continue
      try:
        re.compile(rule[0])
      except re.error as e:
        err.bad(f"sharding.{field}[{i}]", f"bad regex {rule[0]!r}: {e}")
      unknown = [a for a in rule[1] if a is not None and a not in logical]
      if unknown:
        err.bad(f"sharding.{field}[{i}]", f"logical axes {unknown} are not in "
                f"sharding.logical_axes {sorted(logical)}; add them there or use None")


def _check_alignment(config: Any, model_cfg: Any, err: _Errors) -> tuple[dict, int, bool]:
  """(data section as a dict with alignment resolved, that alignment, whether a chunk field
  of the model was the error)."""
  data_dict = config.data.to_dict()
  alignment = data_dict.get("alignment", 0)
  model_alignment = int(getattr(model_cfg, "alignment", 1)) if model_cfg is not None else 1
  seq_len = data_dict.get("seq_len")
  chunk_errors = _chunk_field_errors(model_cfg, seq_len) if _type_ok(seq_len, int) else []
  for field, message in chunk_errors:
    err.bad(field, message)
  if chunk_errors and alignment == 0:
    # The chunk fields named above are the cause; do not blame data.seq_len as well.
    model_alignment = 1
  if not _type_ok(alignment, int) or alignment < 0:
    err.bad("data.alignment", f"must be an int >= 0 (0 = the model's alignment), got "
            f"{alignment!r}")
    alignment = 1
  elif alignment == 0:
    alignment = model_alignment
  elif alignment % model_alignment:
    err.bad("data.alignment", f"{alignment} is not a multiple of the model's alignment "
            f"{model_alignment} (its chunk size): memory resets would fall inside chunks; set "
            f"--config.data.alignment=0 (auto) or a multiple of {model_alignment}")
  data_dict["alignment"] = alignment
  return data_dict, alignment, bool(chunk_errors)


def _check_data(data_dict: dict, process_count: int, err: _Errors):
  """The data pipeline's typed config (None when it is invalid)."""
  from nl_jax import data as data_lib  # pylint: disable=g-import-not-at-top

  try:
    data_cfg = data_lib.config_from(data_dict)
    if data_cfg.shard_count is None:
      data_cfg = dataclasses.replace(data_cfg, shard_index=0, shard_count=process_count)
    elif data_cfg.shard_count % process_count:
      err.bad("data.shard_count", f"{data_cfg.shard_count} is not a multiple of the "
              f"{process_count} processes; use a multiple or None (one shard per process)")
    return data_lib.validate_config(dataclasses.replace(data_cfg, shard_index=0))
  except ValueError as e:
    msg = str(e).replace("invalid data config:\n  ", "")
    err.lines.extend(m.replace("field '", "field 'data.") for m in msg.split("\n  "))
    return None


def _check_data_against(data_cfg: Any, model_cfg: Any, mesh_shape: dict | None,
                        chunk_error: bool, err: _Errors) -> None:
  """The data config against the mesh (batch divisibility) and the model (length, vocab)."""
  from nl_jax import data as data_lib  # pylint: disable=g-import-not-at-top

  if mesh_shape is not None:
    dp = mesh_shape["data"] * mesh_shape["fsdp"]
    for k in ("batch_size", "eval_batch_size"):
      v = getattr(data_cfg, k) or data_cfg.batch_size
      if v % dp:
        err.bad(f"data.{k}", f"{v} is not divisible by the data parallelism "
                f"mesh.data*mesh.fsdp = {dp}; use a multiple of {dp}")
  if model_cfg is None:
    return
  if not chunk_error:
    try:
      model_cfg.validate_seq_len(data_cfg.seq_len)
    except ValueError as e:
      err.bad("data.seq_len", str(e))
  if data_cfg.seq_len > MAX_SEQ_LEN:
    err.bad("data.seq_len", f"{data_cfg.seq_len} exceeds the position range {MAX_SEQ_LEN} "
            "(float32 RoPE angles lose integer positions beyond 2**24); use at most "
            f"{MAX_SEQ_LEN}")
  try:
    vocab = data_lib.vocab_size(data_cfg)
    if model_cfg.vocab_size < vocab:
      err.bad("model.vocab_size", f"{model_cfg.vocab_size} < the tokenizer's vocabulary "
              f"{vocab} ({data_cfg.tokenizer!r}); set --config.model.vocab_size={vocab}")
  except (ValueError, FileNotFoundError) as e:
    err.bad("data.tokenizer", str(e))


def validate(config: Any, *, num_devices: int | None = None,
             process_count: int | None = None) -> Resolved:
  """Checks the whole config before any compilation.

  Args:
    config: a ConfigDict from `default_config` / an experiment config file.
    num_devices: devices of the mesh (default ``jax.device_count()``).
    process_count: processes (default ``jax.process_count()``).

  Returns:
    `Resolved` (model config dataclass, mesh shape, data config with alignment resolved).

  Raises:
    ConfigError: listing every bad field with its fix.
  """
  import jax  # pylint: disable=g-import-not-at-top

  num_devices = jax.device_count() if num_devices is None else num_devices
  process_count = jax.process_count() if process_count is None else process_count
  err = _Errors()
  _check_keys(config, err)
  model_cfg = _check_model(config, err)
  _check_optimizer(config, model_cfg, err)
  _check_train(config.train, err)
  _check_sharding(config.sharding, err)
  mesh_shape = None
  try:
    mesh_shape = resolve_mesh_shape(config.mesh, num_devices)
  except ConfigError as e:
    err.lines.extend(str(e).split("\n  ")[1:])
  data_dict, alignment, chunk_error = _check_alignment(config, model_cfg, err)
  data_cfg = _check_data(data_dict, process_count, err)
  if data_cfg is not None:
    _check_data_against(data_cfg, model_cfg, mesh_shape, chunk_error, err)
  err.fail()
  return Resolved(model_config=model_cfg, mesh_shape=mesh_shape, data_config=data_cfg,
                  alignment=alignment)
