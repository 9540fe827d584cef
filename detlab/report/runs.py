"""Runs and their grouping: a run directory (results.json, .hydra/overrides.yaml) read as a Run, runs grouped by
configuration (every override but the seed), the study's factors, the baseline configuration."""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from detlab.evaluation.analysis import ERROR_TYPES
from detlab.errors import ConfigError


IGNORED = ("seed",)
ABSENT = "default"  # the level of a factor that a configuration does not override
# Overrides that say how a run was started, not what it is: a run resumed with ckpt_path=... is the same configuration
# (detlab-train refuses a resume with other model, loss or optim values than its checkpoint's).
NOT_CONFIGURATION = ("ckpt_path",)


SPREAD_LIMIT = 1.5  # p90 / median latency above which a speed is flagged: the machine did other work meanwhile


class ReportError(ConfigError):
    """Runs that cannot be reported as asked; the message says which and what to do."""


@dataclass
class Run:
    """One finished run: where it is, its overrides {key: value} and its numbers {metric: value}."""

    name: str
    overrides: dict[str, str]
    values: dict[str, float]
    study: str | None = None
    device: str | None = None
    speed_spread: float | None = None  # p90 / median of the batch-1 latency: above SPREAD_LIMIT the machine was busy
    pruned: bool = False  # stopped early by prune.* (detlab.training.pruning): its numbers are not its budget's
    provenance: dict[str, Any] = field(default_factory=dict)  # results.json["provenance"] (detlab.training.provenance)


@dataclass
class Group:
    """The runs of one configuration (the same overrides but for the ignored keys, i.e. the seeds)."""

    overrides: dict[str, str]
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> np.ndarray:
        return np.asarray([r.values[metric] for r in self.runs if metric in r.values], dtype=np.float64)

    def seeds(self) -> list[str]:
        """Its runs' seeds ("seed=2"; "seed=default" without the override), one each, or a ReportError: two runs
        of one seed (told apart by another --ignore key) leave a seed's pair undefined."""
        seeds = [f"seed={r.overrides.get('seed', ABSENT)}" for r in self.runs]
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            config = " ".join(f"{k}={v}" for k, v in self.overrides.items()) or "the configuration without overrides"
            raise ReportError(f"{', '.join(repeated)}: more than one run of {config}, so a seed pairs with no one "
                              "run; report one run per seed")
        return seeds

    def by_seed(self, metric: str) -> dict[str, float]:
        """{seed: value} of the runs that recorded metric: what pairs a run with the same seed's in another group."""
        return {seed: r.values[metric] for seed, r in zip(self.seeds(), self.runs) if metric in r.values}


def read_run(run_dir: Path) -> Run:
    """A run directory -> Run. COCO metrics, plus ms_per_img, img_per_s, params and gflops when recorded."""
    if not (run_dir / "results.json").is_file():
        raise ReportError(f"{run_dir}: no results.json (the run failed or has not finished)")
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{run_dir / 'results.json'} is not valid JSON ({err}): it was cut short or edited; move "
                          f"the run aside, or score its checkpoint again with detlab-eval run {run_dir}") from None
    if not isinstance(results, dict) or not isinstance(results.get("metrics"), dict):
        raise ReportError(f"{run_dir / 'results.json'} has no \"metrics\" object: it is not a run's results as "
                          f"detlab-train writes them; move the run aside, or score its checkpoint again with "
                          f"detlab-eval run {run_dir}")
    try:  # a file edited by hand (tv_parity's records relabelled theirs) may hold anything: name it, not a traceback
        values, speed, study, spread = _numbers(results)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ReportError(f"{run_dir / 'results.json'} is not a run's results as detlab-train writes them "
                          f"({err!r}): fix or move the run aside, or score its checkpoint again with detlab-eval run "
                          f"{run_dir}") from None
    overrides = read_overrides(run_dir / ".hydra" / "overrides.yaml")
    return Run(name=str(run_dir), overrides=overrides, values=values, study=study, device=speed.get("device"),
               speed_spread=spread, pruned=results.get("pruned") is not None, provenance=results.get("provenance") or {})


def _numbers(results: dict) -> tuple[dict[str, float], dict, str | None, float | None]:
    """results.json -> (values {metric: number}, its speed node, the study, p90 / median of the batch-1 latency)."""
    # COCO writes -1 where a metric is undefined (no ground truth of that size): missing, not a value.
    values = {k: float(v) for k, v in results["metrics"].items() if v is not None and float(v) >= 0}
    speed = results.get("speed") or {}
    for key in ("ms_per_img", "img_per_s"):
        if key in speed:
            values[key] = float(speed[key])
    cost = results.get("complexity") or speed
    for key in ("params", "gflops"):
        if key in cost:
            values[key] = float(cost[key])
    # Per-class AP ("AP/<class>") and the TIDE breakdown ("dAP_<type>"): compared like any other number.
    values.update({f"AP/{name}": float(ap) for name, ap in (results.get("per_class_AP") or {}).items()})
    dap = (results.get("errors") or {}).get("dAP") or {}
    values.update({f"dAP_{kind}": float(dap[kind]) for kind in ERROR_TYPES if kind in dap})
    study = (results.get("config") or {}).get("tracking", {}).get("group")
    total = (speed.get("latency_ms") or {}).get("total") or {}
    spread = float(total["p90"]) / float(total["median"]) if total.get("median") else None
    return values, speed, study, spread


def read_overrides(path: Path) -> dict[str, str]:
    """A run's .hydra/overrides.yaml (Hydra's list of key=value) -> its configuration {key: value}; {} when the run
    has none."""
    if not path.is_file():
        return {}
    try:
        overrides = yaml.safe_load(path.read_text()) or []
    except yaml.YAMLError as err:
        raise ReportError(f"{path} is not valid YAML ({' '.join(str(err).split())}): it was cut short or edited; "
                          "it must be Hydra's list of overrides (- key=value)") from None
    if not isinstance(overrides, list) or any(isinstance(o, (dict, list)) for o in overrides):
        raise ReportError(f"{path} is not Hydra's list of overrides (- key=value, one a line) but "
                          f"{overrides!r:.80}: a run's configuration cannot be read from it")
    return configuration(overrides)


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """["+a.b=1", "model=ssd300"] -> {"a.b": "1", "model": "ssd300"} (append/force prefixes dropped)."""
    parsed = {}
    for item in overrides:
        key, _, value = str(item).partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed


def configuration(overrides: Sequence[str]) -> dict[str, str]:
    """A run's command-line overrides as its configuration: parsed, less the keys that say how it was started
    (NOT_CONFIGURATION). One rule for run folders and for runs read from W&B (detlab.report.wandb)."""
    return {k: v for k, v in parse_overrides(overrides).items() if k not in NOT_CONFIGURATION}


def find_runs(paths: Sequence[str | Path]) -> tuple[list[Run], list[Path]]:
    """The runs under each path (a run directory, a multirun folder, any folder of runs), in natural order,
    and the run directories left out: without results.json (failed or unfinished) or pruned."""
    runs, left_out, seen = [], [], set()
    for path in map(Path, paths):
        if not path.is_dir():
            raise ReportError(f"{path}: no such folder (give a run directory or a multirun folder)")
        for run_dir in run_dirs(path):
            if run_dir.resolve() in seen:  # a folder given twice, or a run and its multirun: one run, counted once
                continue
            seen.add(run_dir.resolve())
            run = read_run(run_dir) if (run_dir / "results.json").is_file() else None
            if run is None or run.pruned:
                left_out.append(run_dir)
            else:
                runs.append(run)
    return runs, left_out


def run_dirs(path: Path) -> list[Path]:
    """The run directories under path (path itself when it is one), in natural order: a run directory is one that
    Hydra started (.hydra/) or that finished (results.json)."""
    if (path / ".hydra").is_dir() or (path / "results.json").is_file():
        return [path]
    started = {p.parent.parent for p in path.rglob(".hydra/overrides.yaml")}
    return sorted(started | {p.parent for p in path.rglob("results.json")}, key=_natural)


def group_runs(runs: Sequence[Run], ignore: Sequence[str] = IGNORED) -> list[Group]:
    """Runs with the same overrides, the ignored keys left out, in the order of their first run.

    Two runs of one configuration that the ignored keys do not tell apart either (the same seed: a multirun
    repeated, two runs without a seed override) are a ReportError: averaged as two seeds, they would shrink
    the interval with a seed that was not drawn again."""
    groups: dict[tuple, Group] = {}
    first_of: dict[tuple, Run] = {}
    for run in runs:
        kept = {k: v for k, v in run.overrides.items() if k not in ignore}
        key = tuple(sorted((k, override_value(v)) for k, v in kept.items()))  # `false` and a sweep's `False` alike
        ignored = tuple(override_value(run.overrides[k]) if k in run.overrides else ABSENT for k in ignore)
        other = first_of.setdefault((key, ignored), run)
        if other is not run:
            same = " ".join(f"{k}={v}" for k, v in zip(ignore, ignored)) or "no ignored key"
            raise ReportError(f"{other.name} and {run.name} are the same configuration with the same {same}: one "
                              "seed counted twice would narrow the interval; report one of them (move the other "
                              "aside, or give only one of their folders)")
        groups.setdefault(key, Group(kept)).runs.append(run)
    return list(groups.values())


def factors(groups: Sequence[Group]) -> list[str]:
    """The override keys whose value differs between configurations (the study's factors), in command order: by
    value, as the runs are grouped (a run's `false` and a multirun job's `False` are one level, not a factor)."""
    keys = list(dict.fromkeys(k for g in groups for k in g.overrides))
    absent = object()  # not overridden: no value of the grammar equals it (`null` and `default` are values)
    levels = {k: {override_value(g.overrides[k]) if k in g.overrides else absent for g in groups} for k in keys}
    return [k for k in keys if len(levels[k]) > 1]


def common_overrides(groups: Sequence[Group]) -> dict[str, str]:
    varying = set(factors(groups))
    return {k: v for k, v in groups[0].overrides.items() if k not in varying} if groups else {}


def short_key(key: str) -> str:
    """experiment/focal_gamma -> focal_gamma, optim.optimizer.lr -> lr: what a column or a legend shows."""
    return re.split(r"[/.@]", key.split("@")[0])[-1]


def column_names(keys: Sequence[str]) -> dict[str, str]:
    """{key: its column's name}: the short key (lr), or the whole key where two factors share one (data.train.img_dir
    and data.source.shared.img_dir: one column named img_dir held the second's value in both runs' rows)."""
    counts = Counter(short_key(k) for k in keys)
    return {k: short_key(k) if counts[short_key(k)] == 1 else k for k in keys}


def label(group: Group, keys: Sequence[str]) -> str:
    """A configuration's name from its factor levels: the option name for a config group (ssd300), key=value
    for a value (alpha=0.25)."""
    parts = []
    for key in keys:
        value = group.overrides.get(key, ABSENT)
        parts.append(value if "." not in key.split("@")[0] else f"{short_key(key)}={value}")
    return ", ".join(parts) or "all runs"


def find_baseline(groups: Sequence[Group], spec: str) -> Group:
    """The one configuration that matches every `key=value` of spec (keys in full or short: loss.alpha or alpha,
    experiment/focal_gamma or focal_gamma), or whose label is spec."""
    keys = factors(groups)
    wanted = parse_overrides(spec.split())
    def has(group: Group, key: str, value: str) -> bool:
        return any(key in (k, short_key(k)) and same_value(v, value) for k, v in group.overrides.items())

    matches = [
        g for g in groups if label(g, keys) == spec or (wanted and all(has(g, k, v) for k, v in wanted.items()))
    ]
    if len(matches) != 1:
        names = "; ".join(" ".join(f"{k}={g.overrides.get(k, ABSENT)}" for k in keys) or label(g, keys) for g in groups)
        found = "no configuration" if not matches else f"{len(matches)} configurations"
        raise ReportError(f"--baseline {spec!r} matches {found}; the configurations are: {names}")
    return matches[0]


def same_value(a: str, b: str) -> bool:
    """Two override values that the command line reads as one (see override_value)."""
    return a == b or override_value(a) == override_value(b)


def override_value(text: str) -> Any:
    """An override's value as the command line reads it, hashable: Hydra's sweeper writes a bool level as `False`
    where the user types `false` (a run and a multirun of one configuration), a float as `0.5` where the user
    types `.5`; a list is a tuple, a dict its sorted items. Text that is no value of the grammar stays text."""
    from hydra.errors import HydraException

    try:
        value = _hashable(_override_parser().parse_override(f"k={text}").value())
        hash(value)
    except (HydraException, TypeError):  # no value of the grammar, or a sweep (a run's overrides hold none)
        return text
    return value


@functools.cache
def _override_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser  # 0.15 s: once, when runs are grouped

    return OverridesParser.create()


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def _natural(path: Path) -> list:
    """Sort key with numbers compared as numbers: multirun/.../2 before multirun/.../10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]
