"""detlab-train: compose the config, train one run (detlab.training.run), or each of a Hydra multirun.

    detlab-train model/backbone=resnet50 loss.gamma=0 data.image_size=320 trainer.max_epochs=3
    detlab-train -m loss.gamma=0,1,2          # a Hydra multirun sweep

Only Hydra is imported before the run starts: --help and TAB completion (Hydra's) need no torch.
"""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from detlab.config import CONF_DIR
from detlab.errors import ConfigError, check_writable, user_errors, writing


def main() -> None:
    """The console script. Hydra prints its own user errors (an unknown key or config option, an override it cannot
    parse) as one message, and exits 1; before any run started that status is the user's, and becomes 2, as for
    every other user error. A run's own status stands: 2 for its user errors, 1 for a bug, with the traceback."""
    try:
        hydra_main()
    except SystemExit as stop:
        if stop.code == 1 and not _started:
            sys.exit(2)
        raise
    except ValueError as err:  # the one command-line error Hydra raises rather than prints (-m with --cfg job)
        if _started or not str(err).startswith("Only one of --run, --multirun"):
            raise
        print(f"detlab-train: error: {err}", file=sys.stderr)
        sys.exit(2)


_started = False  # whether Hydra reached hydra_main's body (a run, or a multirun's first job)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    global _started
    _started = True
    from detlab.training.console import quiet_library_noise

    quiet_library_noise()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun and _launches_processes(cfg.trainer):
        return _single_run(hydra_cfg.overrides.task, run_dir, hydra_cfg.job.num, hydra_cfg.sweep.dir)
    try:
        with user_errors("detlab-train"):
            from detlab.training.run import train  # torch and Lightning load here, after Hydra's --help and completion

            results = train(cfg, run_dir)
    except SystemExit as stop:
        if multirun and stop.code == 2:  # one job's problem, its message printed: the sweep goes on (FailedJobs)
            return None  # no objective: a sweeper (Optuna) counts the trial as failed
        raise
    return results["metrics"]["AP"]  # the objective a Hydra sweeper (e.g. Optuna) maximises


class WritableRunDir(Callback):
    """A Hydra callback (conf/train.yaml): the run (or sweep) folder must take files before Hydra writes its
    config and log there, which would otherwise stop with Hydra's traceback. A run folder not given on the
    command line (the default runs/<date>/<time>) is one of its own: a run started in the same second as
    another gets <time>-1 (the two shared one folder, each overwriting the other's config, checkpoints and
    results.json); hydra.run.dir=<folder> given again (a resume) is that folder. A folder given again that holds a
    finished run (results.json) is refused unless the run resumes it (ckpt_path, checked against its checkpoint):
    Hydra writes the new config and overrides there before the run starts, and the run wrote over the rest."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _given(config, "hydra.run.dir"):
            with user_errors("detlab-train"), read_write(config.hydra.run):
                config.hydra.run.dir = _new_folder(config.hydra.run.dir, "hydra.run.dir")
        elif not config.get("ckpt_path"):
            _refuse_finished("hydra.run.dir", config.hydra.run.dir, [Path(config.hydra.run.dir)],
                             f"to train it further, resume it: ckpt_path={Path(config.hydra.run.dir) / 'checkpoints'}"
                             f"/last.ckpt with a higher trainer.max_epochs")
        self._check(config.hydra.run.dir, "hydra.run.dir")
        if config.get("ckpt_path"):
            _check_resume(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """The same for a sweep's folder (multirun/<date>/<time>, a study's multirun/<study>/<time>): two sweeps
        started in one second wrote their jobs 0, 1, ... into one folder. The launcher composes each job's config
        again from the hydra overrides, so a new folder is passed on as one. A folder given again that holds
        finished jobs is refused: the jobs are numbered from 0 again, and each would write over the finished one of
        its number (its config, overrides, checkpoints and results.json), whatever its own overrides."""
        if not _given(config, "hydra.sweep.dir"):
            with user_errors("detlab-train"), read_write(config.hydra):
                claimed = _new_folder(config.hydra.sweep.dir, "hydra.sweep.dir")
                if claimed != config.hydra.sweep.dir:
                    config.hydra.sweep.dir = claimed
                    config.hydra.overrides.hydra.append(f"hydra.sweep.dir={_quoted(claimed)}")
        else:
            _refuse_finished("hydra.sweep.dir", config.hydra.sweep.dir, sorted(Path(config.hydra.sweep.dir).glob("*")),
                             "run a failed job again alone with the command the sweep printed at its end; "
                             "detlab-report reads several sweep folders together")
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: str, key: str) -> None:
        with user_errors("detlab-train"):  # exits itself: Hydra would print the traceback of what a callback raises
            check_writable(folder, f"{key}, the run folder", f"set {key} to a folder you can write to")


class FailedJobs(Callback):
    """A Hydra callback (conf/train.yaml): at the end of a multirun, the jobs that wrote no results.json (each
    printed its error and the sweep went on to the next) are named, and detlab-train exits 2. It runs after the
    experiments' ReportCallback, whose report lists them as left out."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from detlab.errors import DetlabError
        from detlab.report.runs import run_dirs

        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = run_dirs(sweep_dir) if sweep_dir.is_dir() else []
        failed = [job for job in jobs if not (job / "results.json").is_file()]
        if failed:
            # A submitit launcher (hydra/launcher=local, slurm) runs each job in a process whose output is a log file.
            logs = sweep_dir / ".submitit"
            where = f"in its log ({logs}/<job id>/*_log.err)" if logs.is_dir() else "above"
            again = "\n".join(f"  {_rerun(job, sweep_dir)}" for job in failed)
            with user_errors("detlab-train"):
                raise DetlabError(f"{len(failed)} of {len(jobs)} jobs failed, each with its error {where}: "
                                  f"{', '.join(map(str, failed))}; the others finished (detlab-report {sweep_dir}). Run a "
                                  f"failed job again in its folder, as the same W&B job of the sweep's group:\n{again}")


def _rerun(job: Path, sweep_dir: Path) -> str:
    """The shell command that runs a sweep's job again alone (_job_alone: its overrides, from .hydra/overrides.yaml,
    its folder and job number, from .hydra/hydra.yaml, and the sweep's folder), resuming from the job's last.ckpt
    where it wrote one."""
    overrides = [str(o) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")]
    last = job / "checkpoints" / "last.ckpt"
    if last.is_file():
        overrides.append(f"ckpt_path={_quoted(str(last))}")
    num = OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.job.num
    return " ".join(["detlab-train", *map(shlex.quote, _job_alone(overrides, job, num, str(sweep_dir)))])


def _given(config: DictConfig, key: str) -> bool:
    """Whether the command line set `key` (a folder given again is a resume, or the user's choice: kept)."""
    return any(str(o).startswith(f"{key}=") for o in config.hydra.overrides.hydra)


def _check_resume(config: DictConfig) -> None:
    """A resume's checks (detlab.training.run.check_start) before Hydra writes this run's config and overrides into
    the folder: a resume refused there (another loss than the checkpoint's, a finished run, a value refused) left
    the folder's .hydra saying the run had been trained with the refused overrides, which detlab-report groups by."""
    with user_errors("detlab-train"):
        from detlab.training.run import check_start  # torch and Lightning: the resume loads them next anyway

        HydraConfig.instance().set_config(config)  # for ${hydra:...} in the run's keys (Hydra sets it again)
        task = copy.deepcopy(config)
        with read_write(task), open_dict(task):
            del task["hydra"]
        check_start(task)


def _refuse_finished(key: str, folder: str, runs: list[Path], fix: str) -> None:
    """Stop (one message, status 2) when one of the run folders `runs`, inside the `folder` given as `key`, holds a
    finished run's results.json, which a new run there would write over."""
    finished = [str(run) for run in runs if (run / "results.json").is_file()]
    if finished:
        with user_errors("detlab-train"):
            raise ConfigError(f"{key}={folder} holds the results.json of {len(finished)} finished run(s) "
                              f"({', '.join(finished)}), which a new run there would write over: leave {key} out for "
                              f"a new folder; {fix}")


def _quoted(value: str) -> str:
    """value as a quoted string of Hydra's override grammar (a path may hold ',', '=', spaces or quotes), in double
    quotes: a shell's single quotes then hold the override whole (the commands FailedJobs prints)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _new_folder(folder: str, key: str) -> str:
    """folder, else folder-1, folder-2, ...: the first that does not exist, created here. mkdir is atomic, so two
    processes asking at once get two folders."""
    candidate, n = folder, 0
    with writing(folder, f"{key}, the run folder", f"set {key} to a folder you can write to"):
        Path(folder).parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                Path(candidate).mkdir()
                return candidate
            except FileExistsError:
                n += 1
                candidate = f"{folder}-{n}"


def _launches_processes(trainer: DictConfig) -> bool:
    """Whether Lightning will start more processes by running this script again (DDP's subprocess launcher)."""
    devices = trainer.get("devices", 1)
    many = trainer.get("num_nodes", 1) > 1 or (isinstance(devices, int) and devices > 1) or devices in (-1, "-1", "auto")
    return many and str(trainer.get("strategy", "auto")).startswith("ddp") and "spawn" not in str(trainer.strategy)


def _job_alone(task_overrides: list[str], run_dir: Path, job_num: int, sweep_dir: str) -> list[str]:
    """detlab-train's arguments that run one job of a sweep as a single run: its overrides and folder, and its job
    number and sweep folder (Hydra's own keys, not the run's overrides), which name its W&B run (run._tracking)."""
    return [*task_overrides, f"hydra.run.dir={_quoted(str(run_dir))}", f"hydra.job.num={job_num}",
            f"hydra.sweep.dir={_quoted(sweep_dir)}"]


def _single_run(task_overrides: list[str], run_dir: Path, job_num: int, sweep_dir: str) -> float | None:
    """One trial of a multirun, trained as a single run of its own in a child process.

    Lightning's DDP launcher starts the other ranks by running sys.argv again, which in a multirun is the
    whole sweep (-m and every value): each rank would start a sweep of its own. A single run relaunches cleanly,
    as the same job (_job_alone).
    """
    proc = subprocess.run([sys.executable, "-m", "detlab.cli.train", *_job_alone(task_overrides, run_dir, job_num,
                                                                                  sweep_dir)], check=False)
    if proc.returncode == 2:  # the job's problem, its message printed: the sweep goes on, as in main
        return None
    if proc.returncode != 0:
        sys.exit(proc.returncode)
    return json.loads((run_dir / "results.json").read_text())["metrics"]["AP"]


if __name__ == "__main__":
    main()
