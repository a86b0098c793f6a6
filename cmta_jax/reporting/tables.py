"""Runs arranged as the paper reports them, and its results tables (Table 1, 2, 8).

Runs are grouped into cells by their saved config (`run_set`), never by directory name:
a column per benchmark and mode (MT10-Fixed, ...), a row per variant. A row is an agent
plus the config fields that tell variants apart within a column (e.g.
`mixture.num_experts` for Table 8, `sac.auxiliary_weight` for the contrastive ablation of
Table 2), labelled by where it departs from the agent's defaults. Each cell: the paper's
max smoothed and max of the seed-mean success curve, its final value, the IQM across
seeds and tasks at the last evaluation every seed reached with its 95% stratified
bootstrap interval, and the number of seeds (docs/results.md). The figures
(`figures.py`) use the same rows and columns.
"""

import dataclasses
import sys

from cmta_jax import cli
from cmta_jax import config as config_lib
from cmta_jax.agents import registry
from cmta_jax.reporting import run_sets, statistics

# A column per benchmark, mode and evaluation protocol: runs evaluated by different rules
# never share a column (let alone a cell).
COLUMN_FIELDS = ("env.benchmark", "env.mode", "train.eval_protocol")
METRIC_HEADERS = ("max smoothed", "max", "final", "IQM [95% CI]", "seeds")


@dataclasses.dataclass(frozen=True)
class Cell:
  """The seeds of one setting, placed in a table."""

  # (agent, ((field, value), ...), config changes on the way (run_sets.LoadedRun.changes)):
  # what tells this variant apart in its column
  row: tuple
  column: str  # e.g. "MT10-Fixed"
  runs: tuple[run_sets.LoadedRun, ...]

  @property
  def label(self) -> str:
    return row_label(self.row)


def load_runs(paths: list[str], skip_bad_runs: bool) -> list[run_sets.LoadedRun]:
  """The runs under `paths` (`run_sets.find_run_dirs`), evaluated yet or not. An unreadable
  run raises ValueError naming it, or with `skip_bad_runs` is named on stderr and left out."""
  runs = []
  for run_dir in run_sets.find_run_dirs(paths):
    try:
      runs.append(run_sets.load_run(run_dir))
    except ValueError as error:
      if not skip_bad_runs:
        raise ValueError(f"{error} (or pass --skip_bad_runs)") from None
      print(f"skipped: {cli.describe(error)}", file=sys.stderr)
  if not runs:
    raise ValueError("no readable run among the given paths")
  return runs


def column_of(config: dict) -> str:
  """'MT10-Fixed', or with another evaluation protocol than the CMTA paper's, e.g.
  'MT10-Mixed (Meta-World+)'."""
  return config_lib.setting_name(
    config["env.benchmark"],
    config["env.mode"],
    config.get("train.eval_protocol", "cmta"),
    config.get("env.episode_length"),
  )


def row_fields(groups: list[list[run_sets.LoadedRun]]) -> list[str]:
  """Fields (besides the agent) whose value differs between settings of one column."""
  by_column: dict[str, list[dict]] = {}
  for group in groups:
    by_column.setdefault(column_of(group[0].config), []).append(group[0].config)
  fields = set()
  for configs in by_column.values():
    for config in configs[1:]:
      fields.update(
        path
        for path in run_sets.differing_fields(configs[0], config)
        if path not in ("agent", *COLUMN_FIELDS)
      )
  return sorted(fields)


def arrange(groups: list[list[run_sets.LoadedRun]]) -> list[Cell]:
  """One cell per setting (`run_sets.group_by_setting`), in table order (rows, then columns)."""
  fields = row_fields(groups)
  cells = []
  for group in groups:
    config = group[0].config
    row = (config["agent"], tuple((f, config.get(f)) for f in fields), group[0].changes)
    cells.append(Cell(row, column_of(config), tuple(group)))
  return sorted(cells, key=lambda c: (_row_order(c.row), _column_order(c.column)))


def row_label(row: tuple) -> str:
  """The agent's name, plus the row fields in which it departs from the agent's defaults,
  plus the config changes its runs went through, if any."""
  agent, values, changes = (*row, ())[:3]
  label = _variant_label(agent, values)
  return f"{label} [{run_sets.describe_changes(changes)}]" if changes else label


def _variant_label(agent: str, values: tuple) -> str:
  spec = registry.AGENT_SPECS.get(agent)
  if spec is None:
    return f"{agent} ({', '.join(f'{f}={v}' for f, v in values)})" if values else agent
  defaults = config_lib.flatten(registry.agent_defaults(config_lib.RunConfig(agent=agent), set()))
  # None: a field the run's config does not record (written before the field existed).
  departures = [
    f"{field}={value}"
    for field, value in values
    if value is not None and defaults.get(field) != value
  ]
  name = spec.help.split(":")[0]
  return f"{name} ({', '.join(departures)})" if departures else name


def _row_order(row: tuple) -> tuple:
  """Registry order of agents; an agent's defaults before its variants."""
  agent = row[0]
  names = registry.agent_names()
  rank = names.index(agent) if agent in names else len(names)
  label = row_label(row)
  return (rank, agent, label != row_label((agent, ())), label)


def _column_order(column: str) -> tuple:
  setting, _, protocol = column.partition(" ")
  benchmark, mode = setting.split("-")
  return (benchmark, protocol, mode)


def cell_texts(summary: dict | None, percent: bool = True) -> list[str]:
  """A cell's five texts: "/" for a setting that did not run; for one not evaluated yet,
  why in the first column, "-" in the others and the number of seeds."""
  if summary is None:
    return ["/"] * len(METRIC_HEADERS)
  if not summary["evaluations"]:
    return [summary["not_evaluated"], "-", "-", "-", str(summary["seeds"])]
  fmt = (lambda x: f"{100 * x:.2f}%") if percent else (lambda x: f"{x:.4f}")
  low, high = summary["final_iqm_ci95"]
  return [
    fmt(summary["max_smoothed"]),
    fmt(summary["max"]),
    fmt(summary["final"]),
    f"{fmt(summary['final_iqm'])} [{fmt(low)}, {fmt(high)}]",
    f"{summary['seeds']} @ {summary['steps']:,}",
  ]


def table_grid(cells: list[Cell], bootstrap_reps: int) -> tuple[list[str], list[str], dict]:
  """Row labels, columns, and {(row index, column): run_sets.summarize_setting or None}."""
  rows = sorted({c.row for c in cells}, key=_row_order)
  columns = sorted({c.column for c in cells}, key=_column_order)
  summaries = {(c.row, c.column): run_sets.summarize_setting(c.runs, bootstrap_reps) for c in cells}
  return (
    [row_label(r) for r in rows],
    columns,
    {(i, column): summaries.get((row, column)) for i, row in enumerate(rows) for column in columns},
  )


def markdown(cells: list[Cell], bootstrap_reps: int = statistics.DEFAULT_BOOTSTRAP_REPS) -> str:
  """A Markdown table: a row per variant, five columns per setting ("/" where none ran, "no
  evaluation yet" where its runs have none)."""
  labels, columns, grid = table_grid(cells, bootstrap_reps)
  header = ["agent"] + [f"{c} {m}" for c in columns for m in METRIC_HEADERS]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for i, label in enumerate(labels):
    texts = [t for c in columns for t in cell_texts(grid[(i, c)])]
    lines.append("| " + " | ".join([label, *texts]) + " |")
  return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
  for char in ("\\", "&", "%", "_", "#", "$", "{", "}"):
    text = text.replace(char, "\\" + char)
  return text


def latex(cells: list[Cell], bootstrap_reps: int = statistics.DEFAULT_BOOTSTRAP_REPS) -> str:
  """A LaTeX tabular (booktabs rules) of the same table as `markdown`."""
  labels, columns, grid = table_grid(cells, bootstrap_reps)
  n = len(METRIC_HEADERS)
  lines = [
    "\\begin{tabular}{l" + ("|" + "r" * n) * len(columns) + "}",
    "\\toprule",
    "agent & " + " & ".join(f"\\multicolumn{{{n}}}{{c}}{{{c}}}" for c in columns) + " \\\\",
    " & " + " & ".join(_latex_escape(m) for _ in columns for m in METRIC_HEADERS) + " \\\\",
    "\\midrule",
  ]
  for i, label in enumerate(labels):
    texts = [_latex_escape(t) for c in columns for t in cell_texts(grid[(i, c)])]
    lines.append(" & ".join([_latex_escape(label), *texts]) + " \\\\")
  lines += ["\\bottomrule", "\\end{tabular}"]
  return "\n".join(lines) + "\n"
