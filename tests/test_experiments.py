"""The named studies of conf/experiment/: each one sweeps its factors over 3 seeds and reports; every sweep
point composes, validates and builds; the levels are the paper's; a real multirun ends with the report. The
Optuna sweeper and the submitit launchers (detlab's `sweep` extra) run or compose with detlab's configs.

Studies whose detector is still missing (conf/model/<name>.yaml absent) are left out of the composition test
by the list below, computed when the tests are collected: they join it as soon as the model config exists.
"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate

from detlab.config import compose_train, validate
from detlab.report.runs import Group, find_baseline, parse_overrides

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def raw(name: str) -> dict:
    return yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())


def models_of(name: str) -> set[str]:
    """The detectors a study names: its `override /model` default and the levels of a `model` sweep."""
    cfg = raw(name)
    named = {v for d in cfg.get("defaults", []) if isinstance(d, dict) for k, v in d.items() if k == "override /model"}
    named |= set(str(cfg["hydra"]["sweeper"]["params"].get("model", "")).split(",")) - {""}
    return named


COMPOSABLE = [e for e in EXPERIMENTS if all((CONF / "model" / f"{m}.yaml").is_file() for m in models_of(e))]


def sweep_jobs(name: str) -> list[list[str]]:
    """The overrides of every job of `detlab-train -m experiment=<name>` but for the seed (seed=0 only), as
    Hydra's basic sweeper expands hydra.sweeper.params (a cartesian product)."""
    params = compose_train([f"experiment={name}"]).hydra.sweeper.params
    arguments = [f"{k}={v}" for k, v in params.items() if k != "seed"]
    parsed = OverridesParser.create().parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def test_every_experiment_group_is_covered():
    assert {"focal_gamma", "focal_alpha_ce", "ssd_focal", "yolo_focal", "ssd300_vs_ssd512", "anchors",
            "detector_comparison"} <= set(EXPERIMENTS)
    assert "focal_gamma" in COMPOSABLE and "anchors" in COMPOSABLE  # RetinaNet is always there


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_study_sweeps_three_seeds_into_its_group_and_reports(name):
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    cfg = raw(name)
    assert text.startswith("# @package _global_\n")
    assert cfg["hydra"]["sweeper"]["params"]["seed"] == "0,1,2"
    assert len(cfg["hydra"]["sweeper"]["params"]) >= 2, "a study has at least one factor besides the seed"
    assert cfg["tracking"]["group"] == name
    assert f"multirun/{name}/" in cfg["hydra"]["sweep"]["dir"]
    report = cfg["hydra"]["callbacks"]["report"]
    assert report["_target_"] == "detlab.report.study.ReportCallback" and report["baseline"]
    assert cfg["trainer"]["max_epochs"] <= 6, "the default budget is a CPU one; users raise it"


@pytest.mark.parametrize("name", COMPOSABLE)
def test_every_sweep_point_composes_validates_and_builds(name):
    jobs = sweep_jobs(name)
    assert len(jobs) >= 2
    for job in jobs:
        cfg = compose_train([f"experiment={name}", *job, "seed=0"])
        validate(cfg)
        parts = instantiate(cfg.model, cls_loss=cfg.loss, num_classes=3)
        assert callable(parts.postprocess)
        assert cfg.tracking.group == name and str(cfg.tracking.name)
    # the baseline the report compares against is one of the levels
    groups = [Group(parse_overrides(job)) for job in jobs]
    find_baseline(groups, raw(name)["hydra"]["callbacks"]["report"]["baseline"])


def record_commands() -> list[tuple[str, str]]:
    """(record, command) for each `detlab-train` line of the fenced blocks of experiments/*/README.md (the exact
    commands the records were run with), continuation lines joined; placeholder lines (`...`) left out."""
    commands = []
    for readme in sorted((CONF.parent / "experiments").glob("*/README.md")):
        for block in re.findall(r"```(?:bash)?\n(.*?)```", readme.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                if line.startswith("detlab-train") and "..." not in line:
                    commands.append((readme.parent.name, line.split(" #")[0]))
    return commands


@pytest.mark.parametrize(("record", "command"), record_commands())
def test_every_records_command_still_composes_and_validates(record, command):
    """A record's command must still run as written: a renamed key, a moved option or a value the checks now
    refuse (a negative weight, a zero width) would make its numbers irreproducible without a word."""
    words = [w for w in shlex.split(command)[1:] if w != "-m" and not w.startswith("hydra")]
    # the study's own sweep, less the keys the command sets itself (command-line values replace them)
    study = compose_train([w for w in words if w.startswith("experiment=")]).hydra.sweeper.params
    given = {w.split("=")[0] for w in words}
    arguments = [f"{k}={v}" for k, v in study.items() if k not in given and k != "seed"] + words
    parsed = OverridesParser.create().parse_overrides(arguments)
    jobs = {tuple(o for o in job if not o.startswith("seed=")) for batch in BasicSweeper.split_arguments(parsed, None)
            for job in batch}
    assert jobs, command
    for job in sorted(jobs):
        cfg = compose_train([*job, "seed=0"])
        if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            continue  # composed (keys and options exist); the GPU itself is validate's to ask for
        validate(cfg)


def test_focal_gamma_pairs_each_gamma_with_the_papers_best_alpha():
    # Lin et al. 2017, Table 1b (../shared/REFERENCES.md): gamma (best alpha)
    paper = {(0, 0.75), (0.5, 0.5), (1, 0.25), (2, 0.25), (5, 0.25)}
    got = set()
    for job in sweep_jobs("focal_gamma"):
        cfg = compose_train(["experiment=focal_gamma", *job])
        assert cfg.loss._target_.endswith("SigmoidFocalLoss") and cfg.model.head._target_.endswith("RetinaNetHead")
        got.add((cfg.loss.gamma, cfg.loss.alpha))
    assert got == paper


def test_focal_alpha_ce_is_cross_entropy_over_the_alphas():
    levels = set()
    for job in sweep_jobs("focal_alpha_ce"):
        cfg = compose_train(["experiment=focal_alpha_ce", *job])
        assert cfg.loss.gamma == 0
        levels.add(cfg.loss.alpha)
    assert levels == {0.25, 0.5, 0.75, 0.9, 0.99}


def test_anchors_are_table_1c():
    # Lin et al. 2017, Table 1c: (#scales, #aspect ratios); scales 2^(k/n), k < n; ratios {1} or {1/2, 1, 2}
    paper = {(1, 1), (2, 1), (3, 1), (1, 3), (2, 3), (3, 3), (4, 3)}
    got = set()
    for job in sweep_jobs("anchors"):
        cfg = compose_train(["experiment=anchors", *job])
        scales, ratios = list(cfg.model.priors.scales), list(cfg.model.priors.aspect_ratios)
        assert scales == pytest.approx([2 ** (k / len(scales)) for k in range(len(scales))])
        assert ratios in ([1.0], [0.5, 1.0, 2.0])
        assert instantiate(cfg.model.priors).num_per_location == len(scales) * len(ratios)
        got.add((len(scales), len(ratios)))
    assert got == paper


# tests/conftest.py's tiny model and data, smaller still: seconds per run on a CPU. `++speed.*` keeps the
# speed measurement at the end of a run short (forced keys: they apply once train.yaml has a speed node).
TINY = [
    "data.image_size=64", "data.batch_size=4", "data.num_workers=0", "data.source.num_train_images=8",
    "data.source.num_val_images=4", "data.source.image_size=96", "model.neck.out_channels=16", "model.head.width=16",
    "model.head.depth=1", "trainer.max_epochs=1", "eval.num_log_images=0", "logger=none",
    "++speed.warmup=1", "++speed.repeats=2", "++speed.batch_size=2",
]


def test_multirun_of_a_study_ends_with_its_report(tmp_path):
    """detlab-train -m experiment=focal_gamma, two of its levels and one seed: the report closes the multirun."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "detlab.cli.train", "-m", "experiment=focal_gamma", *TINY,
         "experiment/focal_gamma=gamma0_alpha0.75,gamma2_alpha0.25", "seed=0", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| gamma0_alpha0.75 (baseline) | 1 |" in proc.stdout
    assert "## Difference from the baseline (gamma0_alpha0.75)" in proc.stdout
    assert "| gamma2_alpha0.25 |" in proc.stdout
    assert f"to record it: detlab-report {sweep} --baseline focal_gamma=gamma0_alpha0.75)" in proc.stdout
    report = sweep / "report"
    assert {p.name for p in report.iterdir()} >= {"results.md", "results.csv", "runs.csv", "metrics.png"}
    overrides = yaml.safe_load((sweep / "1" / ".hydra" / "overrides.yaml").read_text())
    assert "experiment/focal_gamma=gamma2_alpha0.25" in overrides and "seed=0" in overrides


@pytest.mark.parametrize("implementation", ["detlab", "torchvision"])
def test_tv_parity_trains_each_implementation_through_the_entry_point(tmp_path, implementation):
    """Two steps of each arm of experiments/tv_parity (R18, width 64, torchvision's anchors) on tiny data end with
    the COCO table: torchvision's own RetinaNet trains and is scored by detlab's loop."""
    tiny = [t for t in TINY if t.split("=")[0] not in {"model.neck.out_channels", "model.head.width", "model.head.depth"}]
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "detlab.cli.train", "experiment=tv_parity", f"experiment/tv_parity@_global_={implementation}",
         *tiny, "data.max_size=96", "data.batch_size=2", "trainer.limit_train_batches=2", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "COCO box evaluation" in proc.stdout and "AP50" in proc.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == 2
    model = {"detlab": "detlab.models.build.dense_detector",
             "torchvision": "detlab.models.torchvision_retinanet.torchvision_retinanet"}[implementation]
    assert results["config"]["model"]["_target_"] == model


def test_optuna_sweep_runs_each_trial_as_a_submitit_job(tmp_path):
    """hydra/sweeper=optuna_focal over hydra/launcher=local: two trials drawn from the search space, each a
    training job in a submitit process of its own; the sweeper keeps the best of the APs the jobs returned."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "detlab.cli.train", "-m", "hydra/sweeper=optuna_focal", "hydra/launcher=local",
         "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", *TINY, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = []
    for job in ("0", "1"):
        results = json.loads((sweep / job / "results.json").read_text())
        cfg = results["config"]
        point = (cfg["optim"]["optimizer"]["lr"], cfg["loss"]["alpha"], cfg["loss"]["gamma"])
        assert 1e-4 <= point[0] <= 1e-2 and 0.1 <= point[1] <= 0.9 and 0 <= point[2] <= 5, point
        trials.append((point, results["metrics"]["AP"]))
    assert trials[0][0] != trials[1][0], "two trials, two points of the search space"
    assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 2, "each trial ran as a submitit job"
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(ap for _, ap in trials)
    params = best["best_params"]
    assert (params["optim.optimizer.lr"], params["loss.alpha"], params["loss.gamma"]) in [
        point for point, ap in trials if ap == best["best_value"]
    ]


def test_slurm_launcher_composes_for_multi_gpu_trials():
    """The SLURM launcher cannot run here; its config must still fit the plugin's schema (a structured config:
    a misspelt key fails to compose) and carry a 4-GPU DDP trial as one node of 4 tasks."""
    cfg = compose_train(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "hydra.launcher.gpus_per_node=4",
                         "hydra.launcher.tasks_per_node=4", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (1, 4, 4)
    assert launcher.partition == "gpu" and launcher.submitit_folder.endswith("/.submitit/%j")
    local = compose_train(["hydra/launcher=local"]).hydra.launcher
    assert local._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


def test_each_studys_budget_is_the_one_experiments_readme_states():
    """experiments/README.md's budget paragraph names every study's budget: a study whose config sets another
    (tv_parity's 2 epochs of 150 batches of 4) must be named there, not left under 'the default 6 epochs'."""
    text = (CONF.parent / "experiments" / "README.md").read_text()
    paragraph = " ".join(text.split("Each study sets a **budget**")[1].split("\n\n")[0].split())
    for name in EXPERIMENTS:
        cfg = compose_train([f"experiment={name}"])
        epochs, batches, size = cfg.trainer.max_epochs, cfg.trainer.limit_train_batches, cfg.data.batch_size
        if batches is None:  # whole epochs of the default data at its default batch
            assert f"the default {epochs} epochs for the RetinaNet studies" in paragraph, name
        else:
            stated = f"{epochs} epochs of {batches} batches of {size}"
            assert stated in paragraph, f"{name}: {stated} is not in experiments/README.md's budget paragraph"


def readme_commands(readme: Path) -> list[str]:
    """The `detlab-train` lines of a README's fenced blocks, continuation lines joined, placeholders left out."""
    lines = [line for block in re.findall(r"```(?:bash)?\n(.*?)```", readme.read_text(), re.S)
             for line in re.sub(r"\\\n\s*", " ", block).splitlines()]
    return [line.split(" #")[0] for line in lines if line.startswith("detlab-train") and "..." not in line]


RECORDS = sorted((CONF.parent / "experiments").glob("*/**/runs.csv"))


@pytest.mark.parametrize("runs_csv", RECORDS, ids=lambda p: str(p.parent.relative_to(CONF.parent / "experiments")))
def test_every_records_runs_were_made_by_its_readmes_command(runs_csv):
    """Each override of the record's runs (runs.csv, as each run's .hydra/overrides.yaml saved it) is set by a command
    of its README, and every override of those commands is in the runs: the command is the one that produced the
    numbers. The study's sweep keys (its factors and the seed) come from its config. A command word that the runs
    lack must say why in the README ("`key=value` was the default when these runs were made")."""
    import csv

    from detlab.report.runs import override_value

    study = runs_csv.relative_to(CONF.parent / "experiments").parts[0]
    readme = CONF.parent / "experiments" / study / "README.md"
    text = " ".join(readme.read_text().split())
    with runs_csv.open() as f:
        ran = {(k, override_value(v)) for row in csv.DictReader(f) for k, _, v in
               (w.partition("=") for w in row["overrides"].split(" "))}
    swept = {*compose_train([f"experiment={study}"]).hydra.sweeper.params, "seed"}

    def pairs(word: str) -> set:
        key, _, value = word.partition("=")
        return {(key.lstrip("+"), override_value(v)) for v in ([value] if "[" in value else value.split(","))}

    covered = set()
    for command in readme_commands(readme):
        words = [w for w in shlex.split(command)[1:] if w != "-m" and not w.startswith("hydra")]
        if all(pairs(w) & ran or f"`{w}` was the default when these runs were made" in text for w in words):
            covered |= set().union(*map(pairs, words))  # a command these runs can have come from
    unexplained = sorted(f"{k}={v}" for k, v in ran if k not in swept and (k, v) not in covered)
    assert covered and not unexplained, f"{runs_csv}: no command of {readme} sets {unexplained or 'these runs'}"


def test_the_paired_intervals_experiments_readme_quotes_are_the_records():
    """experiments/README.md compares --paired with Welch's on two records: each interval it quotes, and the APs
    degrees of freedom, recomputed from the records' runs.csv with scipy.stats (ttest_rel, ttest_ind)."""
    import csv

    from scipy import stats

    text = " ".join((CONF.parent / "experiments" / "README.md").read_text().split())

    def arms(record: str, metric: str, arm: str, baseline: str) -> tuple[list[float], list[float]]:
        with (CONF.parent / "experiments" / record / "runs.csv").open() as f:
            rows = list(csv.DictReader(f))
        by = {c: [100 * float(r[metric]) for r in rows if r["configuration"] == c] for c in (arm, baseline)}
        return by[arm], by[baseline]  # seeds 0, 1, 2 in the same order in both arms

    def cell(interval) -> str:
        return f"[{interval.low:+.1f}, {interval.high:+.1f}]"

    for record, metric, arm, baseline in (("focal_gamma/default_budget", "AP", "gamma2_alpha0.25", "gamma0_alpha0.75"),
                                          ("ssd300_vs_ssd512", "AP", "ssd512", "ssd300"),
                                          ("ssd300_vs_ssd512", "APs", "ssd512", "ssd300")):
        a, b = arms(record, metric, arm, baseline)
        welch = stats.ttest_ind(a, b, equal_var=False)
        paired, welch_ci = stats.ttest_rel(a, b).confidence_interval(), welch.confidence_interval()
        quoted = f"{cell(paired)} against {cell(welch_ci)}"
        assert re.search(re.escape(cell(paired)) + "( paired)? against " + re.escape(cell(welch_ci)), text), (
            f"{record} {metric}: the records give {quoted}")
    assert f"2 dof against Welch's {welch.df:.1f})" in text  # the APs comparison's


def report_commands(readme: Path) -> list[tuple[list[str], str | None]]:
    """(run folders, --output or None) of each `detlab-report` line of a README's fenced blocks."""
    commands = []
    for block in re.findall(r"```(?:bash)?\n(.*?)```", readme.read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.startswith("detlab-report"):
                words, folders, output = shlex.split(line.split(" #")[0])[1:], [], None
                for i, word in enumerate(words):
                    if word.startswith("--"):
                        continue
                    if i and words[i - 1] == "--output":
                        output = word
                    elif not any(w.startswith("--") for w in words[:i]):  # the positional folders come first
                        folders.append(word)
                commands.append((folders, output))
    return commands


@pytest.mark.parametrize("study", sorted(p.parent.name for p in (CONF.parent / "experiments").glob("*/README.md")))
def test_each_records_report_command_writes_that_record(study):
    """A record's `detlab-report` command, run from the project's root as written, writes the folder that holds the
    runs it names (runs.csv's run column): without --output detlab-report writes experiments/<study>/, so a
    follow-up's command without it would write over the study's main record."""
    import csv

    readme = CONF.parent / "experiments" / study / "README.md"
    for folders, output in report_commands(readme):
        record = CONF.parent / (output or f"experiments/{study}")  # the default: experiments/<the runs' group>
        assert (record / "runs.csv").is_file(), f"{readme}: detlab-report {' '.join(folders)} writes {record}, no record"
        with (record / "runs.csv").open() as f:
            runs = [row["run"] for row in csv.DictReader(f)]
        named = [re.escape(folder).replace(re.escape("$S"), ".*") + r"/\d+" for folder in folders]  # $S: a shell variable
        assert all(any(re.fullmatch(p, run) for p in named) for run in runs), f"{record} holds runs {folders} did not make"
        assert all(any(re.fullmatch(p, run) for run in runs) for p in named), f"{record} lacks runs of {folders}"


def test_the_budget_paragraph_gives_each_records_steps():
    """The budget paragraph says how many steps the records ran (their commands', not the configs': the SSD, YOLO
    and comparison records ran 625, the configs set 80): each record's steps, composed from its runs' overrides
    (runs.csv) on the built-in data, are in it."""
    import csv
    import math

    text = (CONF.parent / "experiments" / "README.md").read_text()
    paragraph = " ".join(text.split("Each study sets a **budget**")[1].split("\n\n")[0].split())
    for runs_csv in RECORDS:
        with runs_csv.open() as f:
            overrides = next(csv.DictReader(f))["overrides"].split(" ")
        cfg = compose_train(overrides)
        per_epoch = math.ceil(cfg.data.source.num_train_images / cfg.data.batch_size)
        if cfg.trainer.limit_train_batches is not None:
            per_epoch = min(per_epoch, cfg.trainer.limit_train_batches)
        steps = cfg.trainer.max_epochs * per_epoch
        assert f"{steps:,} " in paragraph, f"{runs_csv}: {steps} steps, not in experiments/README.md's budget paragraph"
