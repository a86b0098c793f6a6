"""Speed of the learner: the SAC update and action selection, against this machine's matmul peak;
and seeds in one process: the update vmapped over S seeds, and the loop's seed-steps/s.

  python experiments/benchmark.py                      # CMTA at the paper's MT10 and MT50 settings
  python experiments/benchmark.py --agents=all         # + every agent at the MT10 setting
  python experiments/benchmark.py --seed_counts=1,2,4,8 --loop_seeds=1,4   # + the seeds axis

Each agent is built as train.py builds it, from its own defaults, and its update gets the
batch train.py would sample: CMTA's default carry mode, burn_in, gives each row its window
of L steps to replay (the burn-in column; 0 for agents without a recurrent encoder).

For each function: ms per call (median of --calls timed calls after warm-up),
the FLOPs per call that XLA reports for the compiled function, and achieved
GFLOP/s. The peak is a 2048x2048x2048 float32 matmul (median of 20) in the
same process, timed in blocks that alternate with each update's timed calls
(--rounds blocks each), so that this VM's drifting speed affects the update
and its peak alike; every row's "of peak" uses the peak timed beside it.
The last line is one JSON object with every figure.
"""

import json
import platform
import time

from absl import app, flags, logging

from cmta_jax import cli

_AGENTS = flags.DEFINE_list(
  "agents", ["cmta"], "Agents to time at the MT10 setting ('all' = every agent)."
)
_CALLS = flags.DEFINE_integer("calls", 50, "Timed calls per function (after warm-up).")
_WIDTH = flags.DEFINE_integer("hidden_width", 512, "Actor/critic width.")
_BATCH = flags.DEFINE_integer("batch_per_task", 128, "Batch per task.")
_SKIP_MT50 = flags.DEFINE_bool("skip_mt50", False, "Skip the MT50 (T=50) setting.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating blocks of update and peak-matmul calls.")
_SEED_COUNTS = flags.DEFINE_list(
  "seed_counts",
  [],
  "Seeds axis: time THE update vmapped over S seeds (CMTA, MT10, --hidden_width, "
  "--batch_per_task) for each S given, e.g. 1,2,4,8.",
)
_LOOP_SEEDS = flags.DEFINE_list(
  "loop_seeds",
  [],
  "Seeds axis: the training loop's seed-steps/s on Meta-World MT10 (CMTA) for each S given, "
  "e.g. 1,4; a short run of --loop_episode_length warm-up steps then 3 x that many updates.",
)
_LOOP_EPISODE = flags.DEFINE_integer(
  "loop_episode_length", 50, "Episode length (and warm-up, and log interval) of the loop runs."
)
_ENV_WORKERS = flags.DEFINE_integer(
  "env_workers", None, "Environment workers of the loop runs (default: one per core, <= S)."
)
_REPLAY = flags.DEFINE_bool(
  "replay",
  False,
  "Host time per vector step spent on replay, MT10/MT50 x S = 1, 8 at paper sizes: the host "
  "buffer (gather, stack, transfer, add) against the device replay (the step's insert call).",
)
_SKIP_AGENTS = flags.DEFINE_bool(
  "skip_agents", False, "Skip the per-agent update table (only the seeds axis)."
)
PEAK_SIZE, PEAK_CALLS = 2048, 20
LOOP_REPLAY = 100_000  # transitions per seed: the loop runs measure speed, not memory


def _median_seconds(fn, calls: int) -> float:
  return _interleaved_median_seconds({"fn": (fn, calls)}, rounds=1)["fn"]


def _interleaved_median_seconds(fns: dict, rounds: int) -> dict:
  """{name: (fn, calls)} -> {name: median seconds per call}, timed in `rounds` alternating
  blocks (each fn gets ceil(calls / rounds) calls per block)."""
  import numpy as np

  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, (fn, calls) in fns.items():
      for _ in range(-(-calls // rounds)):
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def make_peak_matmul(size: int = PEAK_SIZE):
  """(one call of a size^3 float32 matmul, its FLOPs)."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  return lambda: matmul(a, b).block_until_ready(), 2.0 * size**3


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, list):  # older jax returned one dict per device
    cost = cost[0]
  return float(cost["flops"])


def time_agent(
  agent: str, benchmark: str, calls: int, width: int, batch_per_task: int, rounds: int, peak_call
) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from cmta_jax import config as config_lib
  from cmta_jax import testing
  from cmta_jax.agents import registry, sac
  from cmta_jax.envs.metaworld_env import MultiTaskEnv, task_names
  from cmta_jax.training import steps

  names = task_names(benchmark)
  num_tasks = len(names)
  # The agent's own defaults (e.g. the contrastive term for CMTA only), as train.py uses them.
  run_config = registry.agent_defaults(
    config_lib.replace_fields(config_lib.RunConfig(agent=agent), hidden_width=width), explicit=set()
  )
  networks = registry.make_agent_networks(
    run_config, names, MultiTaskEnv.obs_dim, MultiTaskEnv.action_dim
  )
  sac_config = run_config.sac
  state = sac.init_training_state(jax.random.PRNGKey(0), networks, sac_config)
  t, b = num_tasks, batch_per_task
  # The batch train.py would sample: with CMTA's default carry mode, each row's burn-in window.
  batch = testing.update_batch(run_config, networks, b)
  window = steps.burn_in_steps(run_config, networks)
  update = jax.jit(sac.make_update_fn(networks, sac_config), donate_argnums=0)
  update_flops = _flops(update.lower(state, batch, jax.random.PRNGKey(0)).compile())
  keys = iter(jax.random.split(jax.random.PRNGKey(1), 10 * calls + 10))
  holder = {"state": state}

  def one_update():
    holder["state"], metrics = update(holder["state"], batch, next(keys))
    jax.block_until_ready((holder["state"], metrics))

  for _ in range(3):
    one_update()
  medians = _interleaved_median_seconds(
    {"update": (one_update, calls), "peak": (peak_call, PEAK_CALLS)}, rounds
  )
  update_seconds = medians["update"]

  select = jax.jit(sac.make_select_action_fn(networks), static_argnames="deterministic")
  params = sac.policy_params(holder["state"])
  # One acting step per task: row 0 of each task's rows of the batch.
  obs, task_ids = batch.obs[:, 0], jnp.arange(t, dtype=jnp.int32)
  carry = jax.tree.map(lambda x: x[:, 0], batch.carry_in)
  select_flops = _flops(select.lower(params, obs, task_ids, carry, jax.random.PRNGKey(0)).compile())

  def one_select():
    # Includes the device->host copy of the actions, as in the rollout loop.
    actions, carry_out = select(params, obs, task_ids, carry, next(keys))
    np.asarray(actions)
    jax.block_until_ready(carry_out)

  for _ in range(3):
    one_select()
  select_seconds = _median_seconds(one_select, calls)
  return {
    "agent": agent,
    "benchmark": benchmark,
    "num_tasks": t,
    "batch_per_task": b,
    "width": width,
    "burn_in_steps": window,
    "update_ms": update_seconds * 1e3,
    "update_gflop": update_flops / 1e9,
    "update_gflops_per_sec": update_flops / update_seconds / 1e9,
    "select_ms": select_seconds * 1e3,
    "select_mflop": select_flops / 1e6,
    "select_gflops_per_sec": select_flops / select_seconds / 1e9,
    "peak_ms": medians["peak"] * 1e3,
  }


def _cmta_mt10(width: int, batch_per_task: int):
  """(run config, networks) of CMTA on MT10 at `width`, as train.py builds them."""
  from cmta_jax import config as config_lib
  from cmta_jax.agents import registry
  from cmta_jax.envs.metaworld_env import MultiTaskEnv, task_names

  run_config = registry.agent_defaults(
    config_lib.replace_fields(
      config_lib.PRESETS["paper_mt10_fixed"],
      hidden_width=width,
      batch_per_task=batch_per_task,
    ),
    explicit=set(),
  )
  networks = registry.make_agent_networks(
    run_config, task_names("MT10"), MultiTaskEnv.obs_dim, MultiTaskEnv.action_dim
  )
  return run_config, networks


def time_seed_batch(num_seeds: int, width: int, batch_per_task: int, calls: int) -> dict:
  """The loop's train step (THE update vmapped over `num_seeds` stacked seeds, one jitted
  call) on random batches: ms per call, per seed, and seed-updates per second."""
  import jax

  from cmta_jax import testing
  from cmta_jax.agents import sac
  from cmta_jax.training import keys, steps

  run_config, networks = _cmta_mt10(width, batch_per_task)
  t, b = 10, batch_per_task
  base_keys = jax.numpy.stack([keys.run_key(seed) for seed in range(num_seeds)])
  states = [
    sac.init_training_state(keys.stream_key(key, keys.Stream.INIT), networks, run_config.sac)
    for key in base_keys
  ]
  window = steps.burn_in_steps(run_config, networks)  # CMTA's default: burn-in, L = 20
  spec = steps.batch_spec(t, b, networks, window)
  batch = steps.stack_seeds(
    [testing.update_batch(run_config, networks, b, seed) for seed in range(num_seeds)]
  )
  totals = steps.empty_totals(networks, run_config.sac, states[0], spec)
  holder = {"state": steps.stack_seeds(states), "totals": steps.stack_seeds([totals] * num_seeds)}
  # The update alone, on a given batch ([S, K=1, ...]), as with a replay in host memory.
  batch = jax.tree.map(lambda x: x[:, None], batch)
  train_step = steps.make_train_step(
    networks, run_config.sac, steps.ReplayDraw(b, window), sample_inside=False
  )
  counter = iter(range(10**9))

  def one_call():
    holder["state"], holder["totals"] = train_step(
      holder["state"], holder["totals"], batch, base_keys, next(counter)
    )
    jax.block_until_ready(holder["state"])

  for _ in range(3):
    one_call()
  seconds = _median_seconds(one_call, calls)
  return {
    "seeds": num_seeds,
    "update_ms": seconds * 1e3,
    "update_ms_per_seed": seconds * 1e3 / num_seeds,
    "seed_updates_per_sec": num_seeds / seconds,
  }


def time_loop(num_seeds: int, width: int, batch_per_task: int, episode_length: int, workers):
  """Seed-steps per second of the training loop (Meta-World MT10, CMTA) after compilation: a
  run of one warm-up episode then three episodes of updates; the rate over the last two."""
  import os
  import tempfile

  from cmta_jax import config as config_lib
  from cmta_jax.training import launch, metrics_log

  run_config, _ = _cmta_mt10(width, batch_per_task)
  e = episode_length
  run_config = config_lib.replace_fields(
    run_config,
    episode_length=e,
    warmup_steps=e,
    total_steps=4 * e,
    log_every=e,
    eval_every=4 * e,
    eval_episodes=1,
    checkpoint_every=4 * e,
    replay_capacity=LOOP_REPLAY,
  )
  if workers is None:
    workers = min(num_seeds, os.cpu_count() or 1) if num_seeds > 1 else 0
  with tempfile.TemporaryDirectory() as root:
    launch.train_seeds(
      run_config, root, tuple(range(num_seeds)), log=lambda line: None, env_workers=workers
    )
    records = [
      r for r in metrics_log.read_records(os.path.join(root, "seed0")) if r["kind"] == "train"
    ]
  elapsed = {r["step"]: r["time/elapsed_sec"] for r in records}
  steps_per_sec = 2 * e / (elapsed[4 * e] - elapsed[2 * e])
  return {
    "seeds": num_seeds,
    "env_workers": workers,
    "steps_per_sec": steps_per_sec,
    "seed_steps_per_sec": num_seeds * steps_per_sec,
  }


def replay_host_time(calls: int) -> dict:
  """{"MT10 S=1": ms, ...}: milliseconds of the host's main thread per vector step spent on
  replay, the device's own compute not counted (paper sizes: observations 39, actions 4,
  LSTM 64, batch 128 per task, burn-in 20). Prints the host buffer's figure beside it."""
  import jax
  import numpy as np

  from cmta_jax.replay import device as device_replay
  from cmta_jax.replay.buffer import ReplayBuffer, stack_transitions
  from cmta_jax.training import steps
  from cmta_jax.types import LSTMCarry

  obs_dim, action_dim, carry_dim, batch, window = 39, 4, 64, 128, 20
  rng = np.random.default_rng(0)
  out = {}
  print("host time per vector step on replay (ms; device compute not counted)")
  print(f"{'setting':<10} {'host buffer':>12} {'device replay':>14}")
  for num_tasks in (10, 50):
    # The host buffer, filled (2M transitions): S seeds' draws are S draws of this one.
    host = ReplayBuffer(num_tasks, 2_000_000, obs_dim, action_dim, carry_dim, seed=0)
    state = host.state_dict()
    host.load_state_dict(_filled_state(state, 150, rng))
    for num_seeds in (1, 8):

      def host_step():
        batch_ = stack_transitions(
          [host.sample(batch, window) for _ in range(num_seeds)]
        )  # fmt: skip
        jax.block_until_ready(jax.device_put(batch_))

      host_ms = 1e3 * _median_seconds(host_step, max(3, calls // 5))
      # The device replay: the host's part of a step is the insert call (its transitions
      # sent over, the call dispatched); the capacity does not change it (written in place),
      # so a small one keeps 8 seeds in memory here.
      replay = device_replay.init_seeds(num_seeds, num_tasks, 4096 * num_tasks, 39, 4, 64)
      insert = steps.make_insert()
      zeros = np.zeros((num_seeds, num_tasks, carry_dim), np.float32)
      carry = jax.device_put(LSTMCarry(zeros, zeros))
      holder = {"replay": replay}
      step_data = [
        rng.normal(size=(num_seeds, num_tasks, n)).astype(np.float32)
        for n in (obs_dim, action_dim, obs_dim)
      ]
      reward = np.zeros((num_seeds, num_tasks), np.float32)
      timed = []
      for i in range(calls + 3):
        jax.block_until_ready(holder["replay"])
        start = time.perf_counter()
        holder["replay"] = insert(
          holder["replay"], step_data[0], step_data[1], reward, step_data[2], reward, carry,
          carry, i % 150,
        )  # fmt: skip
        timed.append(time.perf_counter() - start)
      device_ms = 1e3 * float(np.median(timed[3:]))
      name = f"MT{num_tasks} S={num_seeds}"
      out[name] = device_ms
      print(f"{name:<10} {host_ms:12.2f} {device_ms:14.3f}", flush=True)
      del replay, holder
  return out


def _filled_state(state: dict, episode_length: int, rng) -> dict:
  """A full host replay state of `state`'s shape: random transitions in episodes."""
  import numpy as np

  num_tasks, per_task = int(state["num_tasks"]), int(state["capacity_per_task"])
  filled = dict(state)
  for name, trailing in (
    ("obs", 39),
    ("action", 4),
    ("next_obs", 39),
    ("h_out", 64),
    ("c_out", 64),
  ):
    filled[name] = rng.normal(size=(num_tasks, per_task, trailing)).astype(np.float32)
  filled["reward"] = rng.normal(size=(num_tasks, per_task)).astype(np.float32)
  filled["terminated"] = np.zeros((num_tasks, per_task), np.float32)
  filled["episode_step"] = np.broadcast_to(
    np.arange(per_task, dtype=np.int32) % episode_length, (num_tasks, per_task)
  ).copy()
  filled["oldest_h_in"] = np.zeros((num_tasks, 64), np.float32)
  filled["oldest_c_in"] = np.zeros((num_tasks, 64), np.float32)
  filled.update(size=per_task, pos=0)
  return filled


def seeds_axis(counts, loop_counts, width, batch_per_task, calls, episode_length, workers):
  """Prints the seeds-axis tables; returns their rows."""
  rows = {"update": [], "loop": []}
  if counts:
    print(f"THE update vmapped over S seeds (CMTA, MT10, width {width}, batch {batch_per_task})")
    print(f"{'S':>3} {'ms/call':>9} {'ms/seed':>9} {'seed-updates/s':>15}")
  for count in counts:
    row = time_seed_batch(count, width, batch_per_task, calls)
    rows["update"].append(row)
    print(
      f"{count:>3} {row['update_ms']:9.1f} {row['update_ms_per_seed']:9.1f} "
      f"{row['seed_updates_per_sec']:15.1f}",
      flush=True,
    )
  if loop_counts:
    print(f"the training loop, Meta-World MT10 (CMTA, width {width}, episodes of {episode_length})")
    print(f"{'S':>3} {'workers':>7} {'steps/s':>8} {'seed-steps/s':>13}")
  for count in loop_counts:
    row = time_loop(count, width, batch_per_task, episode_length, workers)
    rows["loop"].append(row)
    print(
      f"{count:>3} {row['env_workers']:>7} {row['steps_per_sec']:8.2f} "
      f"{row['seed_steps_per_sec']:13.2f}",
      flush=True,
    )
  return rows


def _counts(values: list[str], flag: str) -> list[int]:
  try:
    counts = [int(v) for v in values]
  except ValueError:
    raise ValueError(f"--{flag} must be positive integers, got {','.join(values)!r}") from None
  if any(c < 1 for c in counts):
    raise ValueError(f"--{flag} must be positive integers, got {','.join(values)!r}")
  return counts


def main(argv):
  del argv
  import jax

  # Orbax reports every file the loop runs write at INFO; keep the console for the figures.
  logging.set_verbosity(logging.WARNING)

  from cmta_jax.agents import registry

  agents = list(registry.AGENTS) if _AGENTS.value == ["all"] else _AGENTS.value
  for agent in agents:
    registry.check_agent(agent)
  if _CALLS.value < 1 or _ROUNDS.value < 1:
    cli.fail("--calls and --rounds must be positive")
  counts = _counts(_SEED_COUNTS.value, "seed_counts")
  loop_counts = _counts(_LOOP_SEEDS.value, "loop_seeds")
  if not 1 <= _LOOP_EPISODE.value <= 500:
    cli.fail(f"--loop_episode_length must be in 1..500, got {_LOOP_EPISODE.value}")
  print(
    f"machine: {platform.processor() or platform.machine()}, {jax.device_count()} x "
    f"{jax.devices()[0].platform}, jax {jax.__version__}"
  )
  report = {} if _SKIP_AGENTS.value else agent_table(agents)
  if _REPLAY.value:
    report["host_replay_ms_per_step"] = replay_host_time(_CALLS.value)
  report["seeds_axis"] = seeds_axis(
    counts,
    loop_counts,
    _WIDTH.value,
    _BATCH.value,
    _CALLS.value,
    _LOOP_EPISODE.value,
    _ENV_WORKERS.value,
  )
  print(json.dumps(report))


def agent_table(agents: list[str]) -> dict:
  """Prints the per-agent update table; returns its figures."""
  peak_call, peak_flops = make_peak_matmul()
  print(
    f"peak: dense float32 {PEAK_SIZE}^3 matmul, median of {PEAK_CALLS} calls timed in "
    f"{_ROUNDS.value} blocks alternating with each update's"
  )
  settings = [("cmta", "MT10")] + ([] if _SKIP_MT50.value else [("cmta", "MT50")])
  settings += [(agent, "MT10") for agent in agents if agent != "cmta"]
  if "cmta" not in agents:
    settings = [s for s in settings if s[0] != "cmta"] + [("cmta", "MT10")]
  rows = []
  header = (
    f"{'agent':<11} {'bench':<5} {'burn-in':>7} {'update ms':>10} {'GFLOP':>8} {'GFLOP/s':>8} "
    f"{'peak GFLOP/s':>12} {'of peak':>7} {'select ms':>10} {'MFLOP':>8}"
  )
  print(header)
  for agent, benchmark in settings:
    row = time_agent(
      agent, benchmark, _CALLS.value, _WIDTH.value, _BATCH.value, _ROUNDS.value, peak_call
    )
    row["peak_gflops_per_sec"] = peak_flops / (row["peak_ms"] / 1e3) / 1e9
    row["update_fraction_of_peak"] = row["update_gflops_per_sec"] / row["peak_gflops_per_sec"]
    rows.append(row)
    print(
      f"{agent:<11} {benchmark:<5} {row['burn_in_steps']:7d} {row['update_ms']:10.1f} {row['update_gflop']:8.2f} "
      f"{row['update_gflops_per_sec']:8.1f} {row['peak_gflops_per_sec']:12.1f} "
      f"{row['update_fraction_of_peak']:7.2f} {row['select_ms']:10.2f} "
      f"{row['select_mflop']:8.2f}",
      flush=True,
    )
  mt10 = next(r for r in rows if r["agent"] == "cmta" and r["benchmark"] == "MT10")
  return {
    "matmul_peak_gflops_per_sec": mt10["peak_gflops_per_sec"],
    "update_fraction_of_matmul_peak": mt10["update_fraction_of_peak"],
    "results": rows,
  }


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
