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
"""The training loop: `train_and_evaluate(config, workdir)`.

One step (`make_train_step`) is a ``jax.jit`` function with explicit in/out shardings and
the train state donated: forward with fresh per-sequence memory (``model.init_memory(B)``,
sharded with the batch), masked next-token cross-entropy, gradients, optimizer update,
and an in-step finiteness guard: when any metric (loss, gradient norm, update norm, the
model's ``aux`` internals) is NaN/Inf, the parameters and optimizer state stay unchanged
and the step is flagged. The host then applies ``train.nan_policy``: ``raise`` stops with
`NonFiniteError` naming the step and the metric(s); ``skip`` continues, up to
``train.nan_skip_budget`` skipped steps in total.

Resumption: on start the newest committed checkpoint in ``<workdir>/checkpoints`` is
restored (params, optimizer state, step, RNG, data iterator), so a restarted run continues
bitwise exactly. A SIGTERM (preemption) makes the loop save at the next step boundary and
return with ``result["preempted"] = True``; multi-process runs use the JAX distributed
runtime's preemption sync point so all processes save the same step.
"""

import dataclasses
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from nl_jax import data as data_lib
from nl_jax.data import batch as batch_lib
from nl_jax.layers import projection
from nl_jax.losses import masked_cross_entropy
from nl_jax.models import common as model_common
from nl_jax.train import checkpoint as ckpt_lib
from nl_jax.train import config as config_lib
from nl_jax.train import guards
from nl_jax.train import mesh as mesh_lib
from nl_jax.train import metrics as metrics_lib
from nl_jax.train import optimizers
from nl_jax.train import sampling
from nl_jax.train import workdir as workdir_lib


class NonFiniteError(FloatingPointError):
  """A train step produced a NaN/Inf metric (nan_policy="raise" or the skip budget ran out)."""


def _registry():
  from nl_jax.models import registry  # pylint: disable=g-import-not-at-top

  return registry


@dataclasses.dataclass
class Setup:
  """Everything built from a validated config (shared by the loop, tests and compile_only)."""

  config: Any
  resolved: config_lib.Resolved
  mesh: jax.sharding.Mesh
  graphdef: Any
  rest: Any
  abstract_params: Any
  param_sh: Any
  abstract_train_state: Any
  train_state_sh: Any
  memory_sh: Any
  batch_sh: Any
  tx: optax.GradientTransformation
  schedule: Any
  num_params: int
  # Which update rule gets which parameter (`optimizers.rule_assignment`).
  assignments: Any = None
  # DGD: {param path: fan-in} of the projections whose inputs the train step records.
  layer_input_paths: Any = None


def _with_sharding(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def build_setup(config: Any, *, devices=None) -> Setup:
  """Validates ``config`` and builds mesh, abstract state and shardings (no allocation)."""
  devices = jax.devices() if devices is None else list(devices)
  resolved = config_lib.validate(config, num_devices=len(devices))
  registry = _registry()
  model_cfg = resolved.model_config
  mesh = mesh_lib.make_mesh(resolved.mesh_shape, devices)
  abstract_model = nnx.eval_shape(lambda: registry.build_model(model_cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_params_state, rest = nnx.split(abstract_model, nnx.Param, ...)
  abstract_params = nnx.to_pure_dict(abstract_params_state)
  param_sh = mesh_lib.param_shardings(abstract_params, mesh, config.sharding)
  assignments = optimizers.rule_assignment(abstract_params, config.sharding)
  tx, schedule = optimizers.make_optimizer(config.optimizer, config.train.steps,
                                           assignments=assignments)
  # The per-parameter table is for debugging (`--debug` on the launch scripts shows it).
  logging.debug("optimizer %s: parameter -> rule -> matrix view:\n%s", config.optimizer.name,
                optimizers.describe_rules(config.optimizer, assignments))
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_sh = mesh_lib.mirror_shardings(abstract_opt, abstract_params, param_sh, mesh)
  repl = mesh_lib.replicated(mesh)
  abstract_train_state = {
      "opt_state": abstract_opt,
      "step": jax.ShapeDtypeStruct((), jnp.int32),
      "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
      "nan_skips": jax.ShapeDtypeStruct((), jnp.int32),
  }
  train_state_sh = {"opt_state": opt_sh, "step": repl, "rng": repl, "nan_skips": repl}
  local_batch = resolved.data_config.batch_size
  abstract_memory = jax.eval_shape(
      lambda p: nnx.merge(graphdef, p, rest).init_memory(local_batch), abstract_params)
  memory_sh = mesh_lib.memory_shardings(abstract_memory, mesh, config.sharding)
  num_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_params)))
  layer_input_paths = None
  if optimizers.needs_layer_inputs(config.optimizer):
    layer_input_paths = _check_layer_inputs(
        graphdef, rest, abstract_params, optimizers.dgd_paths(assignments), local_batch,
        resolved.data_config.seq_len, config.optimizer.name)
  return Setup(config=config, resolved=resolved, mesh=mesh, graphdef=graphdef, rest=rest,
               abstract_params=_with_sharding(abstract_params, param_sh), param_sh=param_sh,
               abstract_train_state=_with_sharding(abstract_train_state, train_state_sh),
               train_state_sh=train_state_sh, memory_sh=memory_sh,
               batch_sh=mesh_lib.batch_sharding(mesh), tx=tx, schedule=schedule,
               num_params=num_params, assignments=assignments,
               layer_input_paths=layer_input_paths)


def _check_layer_inputs(graphdef, rest, abstract_params, wanted, batch_size, seq_len, name):
  """``{path: fan-in}`` of the projections in ``wanted``; raises if one records no input.

  Traces the forward abstractly (no compilation) with the projection recorder on.
  """
  def run(params):
    model = nnx.merge(graphdef, params, rest)
    projection.tag_param_paths(model)
    tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
    with projection.recording() as seen:
      model(tokens, model.init_memory(batch_size), targets=tokens,
            loss_mask=jnp.ones((batch_size, seq_len), jnp.float32))
    found.update(seen)

  found: dict[str, int] = {}
  jax.eval_shape(run, abstract_params)
  missing = [p for p in wanted if p not in found]
  if missing:
    raise ValueError(
        f"optimizer.name={name!r} needs the layer inputs of {missing}, but the model's forward "
        "records none for them (their matmul does not go through nl_jax.layers.projection); "
        "route it through projection.project/record_input or choose another optimizer")
  return {p: found[p] for p in wanted}


def make_train_step(setup: Setup):
  """The jitted ``(params, train_state, batch, rest) -> (params, train_state, metrics)``."""
  graphdef, tx, schedule = setup.graphdef, setup.tx, setup.schedule
  memory_sh = setup.memory_sh
  act_sh = mesh_lib.activation_sharding(setup.mesh)
  input_paths = setup.layer_input_paths

  def forward(params, rest, batch, probes):
    model = nnx.merge(graphdef, params, rest)
    if probes:
      projection.tag_param_paths(model)
    # memory_state=None: the model creates the fresh state (constrained to memory_sh) and
    # knows it starts at position 0 (no padded chunk in the chunked scans).
    with model_common.activation_sharding(act_sh), model_common.memory_sharding(memory_sh), \
        projection.recording(probes):
      logits, _, aux = model(batch["inputs"], None, **batch_lib.model_kwargs(batch))
    total, count = masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])
    return total / jnp.maximum(count, 1.0), (aux, count)

  def step_fn(params, train_state, batch, rest):
    extra = {}
    if input_paths is None:
      (loss, (aux, count)), grads = jax.value_and_grad(forward, has_aux=True)(
          params, rest, batch, None)
    else:
      # The projections' input statistics come back as the probes' gradients: one forward.
      probes = {p: projection.zero_stats(n) for p, n in input_paths.items()}
      (loss, (aux, count)), (grads, stats) = jax.value_and_grad(
          forward, argnums=(0, 3), has_aux=True)(params, rest, batch, probes)
      extra["layer_inputs"] = jax.tree_util.tree_map_with_path(
          lambda path, _: stats.get(mesh_lib.path_str(path)), params)
    updates, new_opt = tx.update(grads, train_state["opt_state"], params, **extra)
    new_params = optax.apply_updates(params, updates)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "update_norm": optax.tree.norm(updates),
        "param_norm": optax.tree.norm(new_params),
        "lr": jnp.asarray(schedule(train_state["step"]), jnp.float32),
        "target_tokens": count,
    }
    metrics.update({f"aux/{k}": jnp.asarray(v, jnp.float32) for k, v in aux.items()})
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in metrics.values()]))

    def keep_new(new, old):
      return jnp.where(finite, new, old)

    new_params = jax.tree.map(keep_new, new_params, params)
    new_opt = jax.tree.map(keep_new, new_opt, train_state["opt_state"])
    rng = jax.random.key_data(jax.random.fold_in(
        jax.random.wrap_key_data(train_state["rng"]), train_state["step"]))
    new_state = {
        "opt_state": new_opt,
        "step": train_state["step"] + 1,
        "rng": rng,
        "nan_skips": train_state["nan_skips"] + (1 - finite.astype(jnp.int32)),
    }
    metrics["finite"] = finite.astype(jnp.float32)
    return new_params, new_state, metrics

  batch_sh = {k: setup.batch_sh for k in data_lib.BATCH_KEYS}
  rest_sh = jax.tree.map(lambda _: mesh_lib.replicated(setup.mesh), setup.rest)
  return jax.jit(
      step_fn,
      in_shardings=(setup.param_sh, setup.train_state_sh, batch_sh, rest_sh),
      out_shardings=(setup.param_sh, setup.train_state_sh, mesh_lib.replicated(setup.mesh)),
      donate_argnums=(0, 1))


def make_eval_step(setup: Setup):
  """The jitted ``(params, batch, rest) -> (loss sum, token count)``."""
  graphdef, memory_sh = setup.graphdef, setup.memory_sh
  act_sh = mesh_lib.activation_sharding(setup.mesh)

  def eval_fn(params, batch, rest):
    model = nnx.merge(graphdef, params, rest)
    with model_common.activation_sharding(act_sh), model_common.memory_sharding(memory_sh):
      logits, _, _ = model(batch["inputs"], None, **batch_lib.model_kwargs(batch))
    return masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])

  batch_sh = {k: setup.batch_sh for k in data_lib.BATCH_KEYS}
  rest_sh = jax.tree.map(lambda _: mesh_lib.replicated(setup.mesh), setup.rest)
  return jax.jit(eval_fn, in_shardings=(setup.param_sh, batch_sh, rest_sh),
                 out_shardings=mesh_lib.replicated(setup.mesh))


def init_state(setup: Setup, seed: int):
  """Fresh ``(params, train_state, rest)``, created directly in their shardings."""
  registry = _registry()
  model_cfg = setup.resolved.model_config

  def init_params(key):
    model = registry.build_model(model_cfg, rngs=nnx.Rngs(key))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))

  key = jax.random.key(seed)
  params = jax.jit(init_params, out_shardings=setup.param_sh)(key)
  opt_state = jax.jit(setup.tx.init, out_shardings=setup.train_state_sh["opt_state"])(params)
  repl = mesh_lib.replicated(setup.mesh)
  train_state = {
      "opt_state": opt_state,
      "step": jax.device_put(jnp.zeros((), jnp.int32), repl),
      "rng": jax.device_put(jax.random.key_data(jax.random.fold_in(key, 1)), repl),
      "nan_skips": jax.device_put(jnp.zeros((), jnp.int32), repl),
  }
  return params, train_state, make_rest(setup, seed)


def make_rest(setup: Setup, seed: int):
  """Non-parameter model variables (e.g. RNG streams; usually none), replicated."""
  if not jax.tree.leaves(setup.rest):
    return setup.rest
  model = _registry().build_model(setup.resolved.model_config, rngs=nnx.Rngs(seed))
  _, _, rest = nnx.split(model, nnx.Param, ...)
  return jax.device_put(rest, mesh_lib.replicated(setup.mesh))


def global_batch(setup: Setup, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """This process's rows -> global arrays sharded over ``data`` x ``fsdp``."""
  return {k: jax.make_array_from_process_local_data(setup.batch_sh, np.asarray(local_batch[k]))
          for k in data_lib.BATCH_KEYS}


def evaluate(setup: Setup, eval_step, params, rest) -> tuple[float, float]:
  """Held-out loss (token-weighted mean) over ``train.eval_batches`` batches."""
  data_cfg = setup.resolved.data_config
  it = data_lib.make_process_iterator(
      data_cfg, jax.process_index(), jax.process_count(), split="validation",
      num_batches=setup.config.train.eval_batches)
  total = count = 0.0
  for local in it:
    s, c = eval_step(params, global_batch(setup, local), rest)
    total += float(s)
    count += float(c)
  return total / max(count, 1.0), count


class _Preemption:
  """SIGTERM or Ctrl-C -> flag: save at the next step boundary and return.

  A second Ctrl-C aborts at once (KeyboardInterrupt). Single process only; multi-process
  runs use JAX's preemption notifier.
  """

  def __init__(self, install: bool):
    self.flag = False
    self._old = {}
    # Python signal handlers can only be set from the main thread.
    if install and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handler)

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    if signum == signal.SIGINT:
      if self.flag:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt
      logging.warning("Ctrl-C: saving a checkpoint at the next step boundary "
                      "(Ctrl-C again aborts at once)")
    else:
      logging.warning("SIGTERM received: saving a checkpoint at the next step boundary")
    self.flag = True

  def restore(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    self._old = {}


def _host_metrics(metrics) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def train_and_evaluate(config: Any, workdir: str, *, devices=None) -> dict[str, Any]:
  """Trains ``config`` in ``workdir``, resuming from its newest checkpoint.

  Args:
    config: a training ConfigDict (`nl_jax.train.config.default_config`, experiment files).
    workdir: run directory: ``config.json``, ``checkpoints/``, ``metrics.jsonl``,
      ``tensorboard/``.
    devices: the devices of the mesh (default: all; a subset runs e.g. 4 of 8 simulated
      CPU devices).

  Returns:
    ``{"step": last step, "preempted": bool, "train_loss": last train loss,
    "eval_loss": last held-out loss or None, "nan_skips": skipped steps, "resumed_from":
    restored step or None, "params": the final parameters (pure dict of global arrays),
    "train_state": optimizer state, step, RNG, skip count}``.

  Raises:
    ConfigError: invalid config (before any compilation).
    NonFiniteError: a non-finite metric under ``nan_policy="raise"`` or past the skip budget.
  """
  workdir = os.path.abspath(workdir)
  setup = build_setup(config, devices=devices)
  config_lib.check_step_memory(setup.resolved, setup.mesh.devices.flat[0])
  # One trainer per workdir (process 0 holds the lock for the whole job).
  lock = workdir_lib.WorkdirLock(workdir) if jax.process_index() == 0 else None
  if lock is not None:
    lock.acquire()
  try:
    return _train_locked(config, workdir, setup)
  finally:
    if lock is not None:
      lock.release()


def _restore_or_init(config: Any, workdir: str, setup: Setup, checkpointer):
  """(latest restored step or None, params, train_state, rest, train_iter).

  A changed config is refused before anything is touched; on any failure the checkpointer
  and the data iterator are closed.
  """
  tcfg = config.train
  data_cfg = setup.resolved.data_config
  train_iter = None
  try:
    if checkpointer.all_steps():
      # Refuse a changed config before touching anything (config.json stays as it was).
      workdir_lib.check_config_change(
          workdir_lib.read_saved_config(os.path.join(workdir, ckpt_lib.CONFIG_FILE)), config,
          allow=bool(tcfg.get("allow_config_changes", False)), workdir=workdir)
    train_iter = data_lib.make_process_iterator(data_cfg, jax.process_index(),
                                                jax.process_count(), split="train")
    restored = checkpointer.restore_latest(setup.abstract_params, setup.abstract_train_state,
                                           train_iter)
  except BaseException:
    checkpointer.close()
    if hasattr(train_iter, "close"):
      train_iter.close()
    raise
  if restored is None:
    params, train_state, rest = init_state(setup, tcfg.seed)
    return None, params, train_state, rest, train_iter
  latest, params, train_state = restored
  logging.info("resumed from step %d", latest)
  return latest, params, train_state, make_rest(setup, tcfg.seed), train_iter


def _metrics_logger(config: Any, workdir: str, setup: Setup) -> metrics_lib.MetricsLogger:
  """The run's logger, with the model FLOPs per token and the mesh's peak for MFU."""
  tcfg = config.train
  data_cfg = setup.resolved.data_config
  model_cfg = setup.resolved.model_config
  embed_params = int(model_cfg.vocab_size * model_cfg.d_model)
  flops = metrics_lib.model_flops_per_token(setup.num_params, embed_params, model_cfg.n_layers,
                                            model_cfg.d_model, data_cfg.seq_len)
  peak = metrics_lib.peak_flops(jax.devices()[0].device_kind, tcfg.peak_flops_per_device,
                                config_lib.PEAK_FLOPS) * setup.mesh.size
  return metrics_lib.MetricsLogger(
      workdir, total_steps=tcfg.steps, tokens_per_step=data_cfg.batch_size * data_cfg.seq_len,
      flops_per_token=flops, peak_flops_total=peak, tensorboard=tcfg.tensorboard,
      enabled=jax.process_index() == 0)


class _Reporter:
  """Host side of a step: fetch its metrics, apply the NaN policy, log them, guard growth."""

  def __init__(self, tcfg: Any, logger, result: dict, first_step: int):
    self.tcfg, self.logger, self.result, self.first_step = tcfg, logger, result, first_step
    self.growth_guard = guards.GrowthGuard(float(tcfg.get("growth_warn_factor", 4.0)))
    self.start_time = time.perf_counter()

  def __call__(self, at: int, metrics) -> None:
    tcfg, result = self.tcfg, self.result
    host = _host_metrics(metrics)
    if at == self.first_step:
      self.logger.progress.message(f"compiled the train step and ran step {at} in "
                                   f"{time.perf_counter() - self.start_time:.1f}s")
      self.logger.start(at)
    if not host.pop("finite"):
      bad = sorted(k for k, v in host.items() if not math.isfinite(v))
      result["nan_skips"] += 1
      msg = (f"non-finite metric(s) {bad} at step {at} (values "
             f"{ {k: host[k] for k in bad} }); the update of this step was dropped")
      if tcfg.nan_policy == "raise":
        raise NonFiniteError(msg + "; nan_policy='raise' (set --config.train.nan_policy="
                             "skip to continue)")
      if result["nan_skips"] > tcfg.nan_skip_budget:
        raise NonFiniteError(msg + f"; {result['nan_skips']} skipped steps exceed "
                             f"train.nan_skip_budget={tcfg.nan_skip_budget}")
      logging.warning("%s; skipping (%d of budget %d)", msg, result["nan_skips"],
                      tcfg.nan_skip_budget)
    result["train_loss"] = host["loss"]
    self.logger.step(at, host["loss"])
    if at % tcfg.log_every == 0 or at == tcfg.steps:
      self.logger.train(at, host)
      self.growth_guard.update(at, host)


def _evaluate_and_sample(setup: Setup, eval_step, params, rest, logger, step: int) -> float:
  """Logs the held-out loss (returned) and, when configured, a sampled continuation."""
  tcfg = setup.config.train
  loss, count = evaluate(setup, eval_step, params, rest)
  logger.eval(step, loss, count)
  if tcfg.get("sample_tokens", 0) and jax.process_count() == 1:
    text, _ = sampling.continuation(
        sampling.model_on_one_device(setup.graphdef, params, rest),
        sampling.tokenizer_of(setup.resolved.data_config), tcfg.sample_prompt,
        tcfg.sample_tokens)
    logger.sample(step, tcfg.sample_prompt, text)
  return loss


def _train_locked(config: Any, workdir: str, setup: Setup) -> dict[str, Any]:
  """`train_and_evaluate` once the workdir lock is held."""
  tcfg = config.train
  data_cfg = setup.resolved.data_config
  pindex, pcount = jax.process_index(), jax.process_count()
  logging.info("model %s: %s parameters; mesh %s over %d devices (%d processes)",
               config.model_name, f"{setup.num_params:,}", dict(setup.mesh.shape),
               setup.mesh.size, pcount)
  # The full placement is for debugging (`--debug` on the launch scripts shows it).
  logging.debug("parameter shardings:\n%s", mesh_lib.describe(setup.abstract_params,
                                                              setup.param_sh))
  # Empty, unreadable or malformed data files fail here, naming the file, before any write.
  data_lib.check_sources(data_cfg)
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=tcfg.keep_checkpoints,
                                       async_save=tcfg.async_checkpointing)
  latest, params, train_state, rest, train_iter = _restore_or_init(config, workdir, setup,
                                                                   checkpointer)
  # Written only now: a resume that fails above leaves the workdir's config untouched.
  ckpt_lib.write_config(workdir, config)
  if pindex == 0:
    # Rows of steps after the restored one (all rows when starting over) are trained again.
    workdir_lib.prepare_metrics_for_resume(workdir, latest if latest is not None else 0)
  step = int(jax.device_get(train_state["step"]))
  train_step = make_train_step(setup)
  eval_step = make_eval_step(setup)
  logger = _metrics_logger(config, workdir, setup)
  preemption = _Preemption(install=pcount == 1)
  result = {"step": step, "preempted": False, "train_loss": None, "eval_loss": None,
            "nan_skips": int(jax.device_get(train_state["nan_skips"])),
            "resumed_from": latest, "already_done": step >= tcfg.steps}
  last_saved = latest
  report = _Reporter(tcfg, logger, result, (latest or 0) + 1)

  try:
    if step < tcfg.steps:
      logger.progress.message("compiling the train step...")
    # Step t's metrics are fetched only after step t+1 is dispatched, so the host never waits
    # for the device between steps. Steps that evaluate, sample or save need the parameters
    # (donated to the next step), so they are reported before anything else happens.
    pending = None
    while step < tcfg.steps:
      batch = global_batch(setup, next(train_iter))
      params, train_state, metrics = train_step(params, train_state, batch, rest)
      step += 1
      # A save overlaps only this one step: its commit (or failure, which stops the run here)
      # comes before the step is reported, so a SIGKILL loses <= checkpoint_every steps.
      checkpointer.poll(wait=True)
      if pending is not None:
        report(*pending)
      pending = (step, metrics)
      evaluate_now = bool(tcfg.eval_batches) and (
          (tcfg.eval_every and step % tcfg.eval_every == 0) or step == tcfg.steps)
      preempted = preemption.flag or (pcount > 1 and checkpointer.reached_preemption(step))
      save_now = ((tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0)
                  or step == tcfg.steps or preempted)
      if not (evaluate_now or save_now):
        continue
      report(*pending)
      pending = None
      if evaluate_now:
        result["eval_loss"] = _evaluate_and_sample(setup, eval_step, params, rest, logger, step)
      if save_now:
        checkpointer.save(step, params, train_state, train_iter)
        last_saved = step
      if preempted:
        logging.warning("preempted: checkpoint of step %d saved; exiting", step)
        result["preempted"] = True
        break
    if last_saved != step:
      checkpointer.save(step, params, train_state, train_iter)
  finally:
    checkpointer.close()
    logger.close()
    preemption.restore()
    if hasattr(train_iter, "close"):
      train_iter.close()
  result["step"] = step
  result["params"] = params
  result["train_state"] = train_state
  return result
