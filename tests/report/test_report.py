"""detlab-report on fabricated run directories (results.json + .hydra/overrides.yaml), against statistics
computed by hand and the published t table."""

import csv
import json
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import PIL.Image
import pytest
import yaml

from detlab.cli.report import main
from detlab.report.plots import _error_bar, pareto_front, plot_metrics, plot_speed_accuracy
from detlab.report.runs import ReportError, find_runs, group_runs
from detlab.report.stats import Interval, mean_interval, paired_interval, welch_interval
from detlab.report.study import write_report
from detlab.report.tables import compare

STUDY = ["experiment=focal_gamma", "trainer.max_epochs=2"]


def fake_run(root: Path, name: str, overrides: list[str], ap: float, ms: float | None = None, study="focal_gamma",
             provenance: dict | None = None, device: str = "cpu: Test CPU", p90: float | None = None,
             per_class: dict | None = None, dap: dict | None = None):
    """A run directory as detlab-train writes it, with made-up numbers."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    results = {
        "metrics": {"AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.05, "APl": -1.0},
        "config": {"tracking": {"group": study}},
    }
    if provenance is not None:
        results["provenance"] = provenance
    if per_class is not None:
        results["per_class_AP"] = per_class
    if dap is not None:
        results["errors"] = {"dAP": dap}
    if ms is not None:
        total = {"median": ms, "p90": p90 or ms * 1.1}
        results["speed"] = {"ms_per_img": ms, "img_per_s": 1e3 / ms, "device": device, "latency_ms": {"total": total}}
    (run / "results.json").write_text(json.dumps(results))
    return run


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A multirun folder: 3 configurations x 3 seeds, job numbers as Hydra numbers them (0..8)."""
    aps = {
        "gamma0_alpha0.75": [0.20, 0.21, 0.25],
        "gamma2_alpha0.25": [0.30, 0.32, 0.34],
        "gamma5_alpha0.25": [0.28, 0.28, 0.28],
    }
    ms = {"gamma0_alpha0.75": 20.0, "gamma2_alpha0.25": 20.5, "gamma5_alpha0.25": 30.0}
    job = 0
    for pair, values in aps.items():
        for seed, ap in enumerate(values):
            overrides = [f"experiment/focal_gamma={pair}", f"seed={seed}", *STUDY]
            fake_run(tmp_path / "sweep", str(job), overrides, ap, ms[pair] + seed)
            job += 1
    return tmp_path / "sweep"


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["configuration"]: row for row in csv.DictReader(f)}


def test_intervals_use_the_published_t_table():
    # Student's t, two-sided 95%, from any statistics textbook's table: the half-width of n seeds with std s is
    # t(0.975, n - 1) s / sqrt(n)
    table = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 10: 2.262, 30: 2.045}
    for n, t in table.items():
        values = np.linspace(0.2, 0.4, n)
        s = mean_interval(values)
        half = t * values.std(ddof=1) / math.sqrt(n)
        assert (s.high - s.estimate) == pytest.approx(half, rel=2e-4) and s.dof == n - 1
    assert mean_interval([0.2, 0.3], confidence=0.90).high - 0.25 == pytest.approx(6.314 * 0.05, rel=2e-4)


def test_mean_std_and_interval_by_hand():
    s = mean_interval([0.30, 0.32, 0.34])
    # mean 0.32, std sqrt((0.02^2 + 0 + 0.02^2) / 2) = 0.02, half-width t(0.975, 2) 0.02 / sqrt(3)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)
    assert (s.n, s.estimate, s.std) == (3, pytest.approx(0.32), pytest.approx(0.02))
    assert (s.low, s.high) == (pytest.approx(0.32 - half), pytest.approx(0.32 + half))


def test_welch_difference_by_hand():
    d = welch_interval([0.30, 0.32, 0.34], [0.20, 0.21, 0.25])
    # variances 0.0004 and 0.0007: se^2 = 0.0011 / 3; dof = (0.0011/3)^2 / ((0.0004/3)^2/2 + (0.0007/3)^2/2) = 242/65
    se = math.sqrt(0.0011 / 3)
    half = 2.8598170480254 * se  # t(0.975, 242/65), scipy.stats.t.ppf
    assert d.dof == pytest.approx(242 / 65)
    assert (d.estimate, d.low, d.high) == (pytest.approx(0.10), pytest.approx(0.10 - half), pytest.approx(0.10 + half))


def test_paired_difference_by_hand():
    d = paired_interval([0.30, 0.32, 0.34], [0.20, 0.21, 0.25])
    # per-seed differences 0.10, 0.11, 0.09: mean 0.10, std 0.01, half-width t(0.975, 2) 0.01 / sqrt(3)
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert d.dof == 2
    assert (d.estimate, d.low, d.high) == (pytest.approx(0.10), pytest.approx(0.10 - half), pytest.approx(0.10 + half))
    assert (paired_interval([0.3, 0.4], [0.2, 0.3]).low, paired_interval([0.3], [0.2]).estimate) == (
        pytest.approx(0.1), pytest.approx(0.1))  # the same gap at every seed: the point; one pair: no interval
    assert paired_interval([0.3, 0.4, 0.5], [0.2, 0.3, 0.4]).dof == 2  # n - 1 pairs' dof, as ttest_rel


def test_one_seed_has_no_interval_and_no_spread_has_a_point_interval():
    assert math.isnan(mean_interval([0.3]).std) and math.isnan(mean_interval([0.3]).low)
    d = welch_interval([0.3, 0.3], [0.2, 0.2])
    assert (d.estimate, d.low, d.high) == (pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.1))


def test_one_seed_each_reports_the_means_and_the_difference_without_intervals(tmp_path):
    for loss, ap in (("ce", 0.20), ("focal", 0.25)):
        fake_run(tmp_path / "runs", loss, [f"loss={loss}", "seed=0"], ap)
    text = write_report(find_runs([tmp_path / "runs"])[0], tmp_path / "out", baseline="loss=ce").markdown
    assert "| ce (baseline) | 1 | 20.0 | 40.0 | 15.0 |" in text  # AP, AP50 = AP + 0.2, AP75 = AP - 0.05 (fake_run)
    assert "| focal | +5.0 | +5.0 | +5.0 |" in text


def test_runs_group_by_every_override_but_the_seed(sweep, tmp_path):
    fake_run(sweep, "9", ["experiment/focal_gamma=gamma2_alpha0.25", "seed=0", STUDY[0], "trainer.max_epochs=3"], 0.5)
    runs, left_out = find_runs([sweep])
    assert [Path(r.name).name for r in runs] == [str(i) for i in range(10)]  # natural order, not 0, 1, 10, 2
    groups = group_runs(runs)
    # a different budget is a different configuration, even at the same gamma
    assert [len(g.runs) for g in groups] == [3, 3, 3, 1]
    assert groups[3].overrides["trainer.max_epochs"] == "3" and "seed" not in groups[3].overrides
    assert left_out == []


def test_a_resumed_run_stays_in_its_configuration(sweep):
    """A job resumed with ckpt_path=... (its overrides.yaml then holds it) is still one seed of its configuration,
    not a configuration of its own with n = 1."""
    overrides = yaml.safe_load((sweep / "2" / ".hydra" / "overrides.yaml").read_text())
    resumed = [*overrides, f"ckpt_path={sweep / '2' / 'checkpoints' / 'last.ckpt'}"]
    (sweep / "2" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(resumed))
    assert [len(g.runs) for g in group_runs(find_runs([sweep])[0])] == [3, 3, 3]


def test_a_run_and_a_multirun_job_of_one_configuration_group_together(tmp_path):
    """A multirun writes a fixed override back as Hydra's value (`False`, `0.5`) where the single run kept what the
    user typed (`false`, `.5`): grouped by their text they were two configurations of n = 1."""
    fake_run(tmp_path / "run", "0", ["trainer.enable_progress_bar=false", "loss.alpha=.5", "seed=0"], 0.4)
    fake_run(tmp_path / "sweep", "0", ["trainer.enable_progress_bar=False", "loss.alpha=0.5", "seed=1"], 0.5)
    fake_run(tmp_path / "sweep", "1", ["trainer.enable_progress_bar=False", "loss.alpha=0.25", "seed=1"], 0.5)
    groups = group_runs(find_runs([tmp_path / "run", tmp_path / "sweep"])[0])
    assert [len(g.runs) for g in groups] == [2, 1]


def test_a_seed_is_counted_once(sweep, tmp_path):
    """The same folder given twice (or a run and its multirun) is read once; a second run of a configuration with
    a seed it already has (a multirun repeated) stops the report: n = 4 from 3 seeds would narrow the interval."""
    runs, _ = find_runs([sweep, sweep, sweep / "4"])
    assert len(runs) == 9
    row = read_csv(write_report(runs, tmp_path / "out").files["csv"])["gamma2_alpha0.25"]
    assert (row["n"], float(row["AP_std"])) == ("3", pytest.approx(np.std([0.30, 0.32, 0.34], ddof=1)))
    again = fake_run(tmp_path / "again", "0", ["experiment/focal_gamma=gamma2_alpha0.25", "seed=1", *STUDY], 0.5)
    with pytest.raises(ReportError, match=f"{sweep / '4'} and {again} are the same configuration with the same seed=1"):
        write_report(find_runs([sweep, again])[0], tmp_path / "out")
    # a new seed of it is one more run
    fake_run(tmp_path / "more", "0", ["experiment/focal_gamma=gamma2_alpha0.25", "seed=3", *STUDY], 0.5)
    groups = group_runs(find_runs([sweep, tmp_path / "more"])[0])
    assert [len(g.runs) for g in groups] == [3, 4, 3]


def test_report_table_and_baseline_difference(sweep, tmp_path):
    report = write_report(*[find_runs([sweep])[0]], tmp_path / "out", baseline="focal_gamma=gamma0_alpha0.75")
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert list(rows) == ["gamma0_alpha0.75", "gamma2_alpha0.25", "gamma5_alpha0.25"]
    g2 = rows["gamma2_alpha0.25"]
    assert float(g2["AP_mean"]) == pytest.approx(0.32) and float(g2["AP_std"]) == pytest.approx(0.02)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)
    assert float(g2["AP_ci_low"]) == pytest.approx(0.32 - half)
    welch_half = 2.8598170480254 * math.sqrt(0.0011 / 3)
    assert float(g2["AP_diff"]) == pytest.approx(0.10)
    assert float(g2["AP_diff_high"]) == pytest.approx(0.10 + welch_half)
    # ms per image: 20.5, 21.5, 22.5 -> mean 21.5, std 1
    assert float(g2["ms_per_img_mean"]) == pytest.approx(21.5) and float(g2["ms_per_img_std"]) == pytest.approx(1.0)
    assert g2["n"] == "3" and g2["focal_gamma"] == "gamma2_alpha0.25"
    # the baseline's difference from itself is exactly 0, not Welch's interval of its runs against themselves
    # (AP 0.20, 0.21, 0.25 twice: +-0.060 by Welch, 4 dof)
    g0 = rows["gamma0_alpha0.75"]
    assert [float(g0[f"AP_diff{s}"]) for s in ("", "_low", "_high")] == [0.0, 0.0, 0.0]

    text = (tmp_path / "out" / "results.md").read_text()
    assert text == report.markdown
    assert "| gamma0_alpha0.75 (baseline) | 3 |" in text
    assert f"32.0 ± 2.0 [{100 * (0.32 - half):.1f}, {100 * (0.32 + half):.1f}]" in text
    assert f"+10.0 [{100 * (0.10 - welch_half):+.1f}, {100 * (0.10 + welch_half):+.1f}]" in text
    # the whole difference row, its configuration named by its level: AP, AP50 and AP75 all +10 by Welch; ms per
    # image 21.5 - 21.0 with std 1 and 1: se sqrt(2/3), dof 4, t(0.975, 4) = 2.776445 -> +0.5 [-1.8, +2.8]
    ap_diff = f"+10.0 [{100 * (0.10 - welch_half):+.1f}, {100 * (0.10 + welch_half):+.1f}]"
    ms_half = 2.776445 * math.sqrt(2 / 3)
    assert f"| gamma2_alpha0.25 | {ap_diff} | {ap_diff} | {ap_diff} | +0.5 [{0.5 - ms_half:+.1f}, {0.5 + ms_half:+.1f}] |" in text
    assert "Common overrides: `experiment=focal_gamma trainer.max_epochs=2`" in text
    runs = list(csv.DictReader((tmp_path / "out" / "runs.csv").open()))
    assert len(runs) == 9 and "APl" not in runs[0]  # COCO's -1 (undefined) is not a value


def test_paired_report_pairs_each_seed_with_the_baselines(sweep, tmp_path, capsys):
    """--paired: the interval of the per-seed differences (gamma2 - gamma0 at seeds 0, 1, 2: 0.10, 0.11, 0.09),
    narrower here than Welch's (+-5.5 points) because the seeds move both configurations alike; the text says
    which interval it is. A configuration without the baseline's seeds cannot be paired: refused."""
    out = tmp_path / "out"
    main([str(sweep), "--baseline", "focal_gamma=gamma0_alpha0.75", "--paired", "--output", str(out)])
    g2 = read_csv(out / "results.csv")["gamma2_alpha0.25"]
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert (float(g2["AP_diff"]), float(g2["AP_diff_low"]), float(g2["AP_diff_high"])) == (
        pytest.approx(0.10), pytest.approx(0.10 - half), pytest.approx(0.10 + half))
    text = (out / "results.md").read_text()
    assert "paired 95% t-interval over the seeds" in text and "Welch" not in text
    assert f"+10.0 [{100 * (0.10 - half):+.1f}, {100 * (0.10 + half):+.1f}]" in text
    fake_run(sweep, "9", ["experiment/focal_gamma=gamma5_alpha0.25", "seed=3", *STUDY], 0.28)
    with pytest.raises(SystemExit) as stop:
        main([str(sweep), "--baseline", "focal_gamma=gamma0_alpha0.75", "--paired", "--output", str(out)])
    assert stop.value.code == 2
    assert "gamma5_alpha0.25 ran seed=0, seed=1, seed=2, seed=3 and the baseline seed=0, seed=1, seed=2" in capsys.readouterr().err
    # pairs are by the seed alone: other --ignore keys merge runs into a configuration, and two runs of one seed
    # there have no one pair
    fake_run(sweep, "10", ["experiment/focal_gamma=gamma5_alpha0.25", "seed=3", STUDY[0], "trainer.max_epochs=3"], 0.3)
    with pytest.raises(ReportError, match="seed=3: more than one run"):
        write_report(find_runs([sweep])[0], out, baseline="focal_gamma=gamma0_alpha0.75",
                     ignore=["seed", "trainer.max_epochs"], paired=True)


def test_a_metric_fewer_runs_recorded_says_its_n(tmp_path):
    """A seed run with speed.enabled=false has no ms_per_img: that cell is the mean of the other two runs (t with
    1 dof), which the row's n = 3 did not say."""
    for seed, ms in enumerate([20.0, None, 22.0]):
        fake_run(tmp_path / "sweep", str(seed), [f"seed={seed}"], 0.3 + seed / 100, ms)
    report = write_report(find_runs([tmp_path / "sweep"])[0], tmp_path / "out")
    assert "| all runs | 3 | 31.0 ± 1.0 [28.5, 33.5] |" in report.markdown
    assert "| 21.0 ± 1.4 [8.3, 33.7] (n=2) |" in report.markdown  # t(0.975, 1) = 12.706: 1.414 / sqrt(2) x 12.706
    row = read_csv(tmp_path / "out" / "results.csv")["all runs"]
    assert (row["n"], row["AP_n"], row["ms_per_img_n"]) == ("3", "3", "2")


def test_plots_are_written(sweep, tmp_path):
    report = write_report(find_runs([sweep])[0], tmp_path / "out", baseline="experiment/focal_gamma=gamma0_alpha0.75")
    for name in ("speed_accuracy", "metrics"):
        image = matplotlib.image.imread(report.files[name])
        assert image.shape[0] > 400 and image.shape[1] > 600, image.shape
    assert "![AP against ms per image](speed_accuracy.png)" in report.markdown


def test_figures_for_a_paper(sweep, tmp_path):
    """200 dpi PNG and a PDF, the study's name as title, units on the axes, a caption line, and intervals clipped
    to the valid range: 3 seeds at AP 0, 0, 0.3 have a t-interval of 0.1 +- 0.43 that would reach -33 points."""
    report = write_report(find_runs([sweep])[0], tmp_path / "out", baseline="experiment/focal_gamma=gamma0_alpha0.75")
    for name in ("speed_accuracy", "metrics"):
        assert PIL.Image.open(report.files[name]).info["dpi"] == pytest.approx((200, 200), abs=0.01)
        assert report.files[f"{name}_pdf"].read_bytes().startswith(b"%PDF")
    groups = group_runs(find_runs([sweep])[0])
    rows = compare(groups, ["AP", "ms_per_img"], None)
    fig = plot_metrics(rows, ["AP", "ms_per_img"], tmp_path / "m.png", title="focal_gamma")
    assert fig.get_suptitle() == "focal_gamma"
    assert fig.get_supxlabel().startswith("bars: mean of 3 seeds, 95% t-interval (clipped to the valid range); dots")
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == ["AP (points, x100)", "ms per image (batch 1, median)"]
    fig = plot_speed_accuracy(rows, tmp_path / "s.png", title="focal_gamma")
    assert fig.axes[0].get_xlabel() == "ms per image (batch 1, median)" and fig.axes[0].get_title() == "focal_gamma"
    # the Pareto front joins gamma0 (21.0 ms, AP 22.0 points) and gamma2 (21.5 ms, 32.0); gamma5 (31.0, 28.0) is off it
    front = [line for line in fig.axes[0].lines if line.get_label().startswith("Pareto front")]
    assert [list(front[0].get_xdata()), list(front[0].get_ydata())] == [
        [pytest.approx(21.0), pytest.approx(21.5)], [pytest.approx(22.0), pytest.approx(32.0)]]
    assert fig.get_supxlabel().startswith("points: mean of 3 seeds; bars: 95% t-intervals on both axes")
    wide = mean_interval([0.0, 0.0, 0.3])
    assert wide.low == pytest.approx(0.1 - 4.302653 * math.sqrt(0.03) / math.sqrt(3), abs=1e-6) and wide.low < -0.3
    assert _error_bar(wide, 100, "AP") == [[pytest.approx(10.0)], [pytest.approx((wide.high - 0.1) * 100)]]
    assert _error_bar(Interval(0.95, 0.8, 1.1), 100, "AP") == [[pytest.approx(15.0)], [pytest.approx(5.0)]]
    assert _error_bar(Interval(5.0, -2.0, 12.0), 1, "ms_per_img") == [[5.0], [7.0]]


def test_per_class_and_error_breakdown_differences_from_the_baseline(tmp_path):
    """Per-class AP and TIDE dAP of each seed, compared like the headline numbers: cat as in the Welch case
    worked by hand above (+10.0 [+4.5, +15.5] points), Cls errors with no spread (an exact -3.0)."""
    cat = {"ce": [0.20, 0.21, 0.25], "focal": [0.30, 0.32, 0.34]}
    cls = {"ce": 0.05, "focal": 0.02}
    for loss in ("ce", "focal"):
        for seed in range(3):
            fake_run(tmp_path / "runs", f"{loss}{seed}", [f"loss={loss}", f"seed={seed}"], 0.3,
                     per_class={"cat": cat[loss][seed], "dog": 0.4}, dap={"Cls": cls[loss], "Loc": 0.1, "FP": 0.3})
    report = write_report(find_runs([tmp_path / "runs"])[0], tmp_path / "out", baseline="loss=ce")
    text = report.markdown
    assert "## Per-class AP: difference from the baseline (ce)" in text
    assert "| class | ce (baseline) | Δ focal |" in text
    assert "| cat | 22.0 ± 2.6 [15.4, 28.6] | +10.0 [+4.5, +15.5] |" in text
    assert "| dog | 40.0 ± 0.0 [40.0, 40.0] | +0.0 [+0.0, +0.0] |" in text
    assert "## Error breakdown: difference from the baseline (ce)" in text
    assert "| Cls | 5.0 ± 0.0 [5.0, 5.0] | -3.0 [-3.0, -3.0] |" in text
    assert "| FP |" not in text  # the six TIDE types only
    for name in ("per_class", "errors"):
        assert report.files[name].is_file() and report.files[f"{name}_pdf"].is_file()
        assert f"({name}.png)" in text
    no_baseline = write_report(find_runs([tmp_path / "runs"])[0], tmp_path / "out2")
    assert "Per-class AP" not in no_baseline.markdown and "per_class" not in no_baseline.files


def test_speed_warnings_for_devices_and_a_busy_machine(tmp_path):
    fake_run(tmp_path / "runs", "a0", ["loss=ce", "seed=0"], 0.2, ms=10.0)
    fake_run(tmp_path / "runs", "b0", ["loss=focal", "seed=0"], 0.3, ms=10.0, p90=15.0)  # p90/median 1.5: fine
    report = write_report(find_runs([tmp_path / "runs"])[0], tmp_path / "out")
    assert "Warning" not in report.markdown and "Speed measured on: cpu: Test CPU." in report.markdown
    fake_run(tmp_path / "runs", "b1", ["loss=focal", "seed=1"], 0.3, ms=10.0, p90=16.0, device="cuda: Test GPU")
    report = write_report(find_runs([tmp_path / "runs"])[0], tmp_path / "out")
    assert "Warning: speed was measured on different devices (cpu: Test CPU, cuda: Test GPU)" in report.markdown
    assert "Warning: 1 runs' speed varied (p90/median latency above 1.5" in report.markdown
    assert f"{tmp_path / 'runs' / 'b1'} (1.60)" in report.markdown


def test_without_speed_the_table_leaves_it_out(tmp_path):
    for seed in range(2):
        fake_run(tmp_path / "runs", f"a{seed}", ["loss=ce_ohem", f"seed={seed}"], 0.2 + seed / 100)
        fake_run(tmp_path / "runs", f"b{seed}", ["loss=focal", f"seed={seed}"], 0.3 + seed / 100)
    report = write_report(find_runs([tmp_path / "runs"])[0], tmp_path / "out", baseline="loss=ce_ohem")
    assert "speed_accuracy" not in report.files and "ms_per_img" not in report.markdown
    assert "| focal |" in report.markdown


def test_report_warns_when_runs_differ_in_code_or_data(tmp_path, caplog):
    same = {"detlab": "0.1.0", "git_sha": "a" * 40, "git_dirty": False, "data_fingerprint": "d" * 64}
    for seed in range(2):
        fake_run(tmp_path / "same", f"a{seed}", ["loss=ce", f"seed={seed}"], 0.2, provenance=same)
        fake_run(tmp_path / "same", f"b{seed}", ["loss=focal", f"seed={seed}"], 0.3, provenance=same)
    report = write_report(find_runs([tmp_path / "same"])[0], tmp_path / "out")
    assert "Warning" not in report.markdown and not caplog.records
    fake_run(tmp_path / "same", "b2", ["loss=focal", "seed=2"], 0.3, provenance={**same, "git_dirty": True})
    fake_run(tmp_path / "same", "b3", ["loss=focal", "seed=3"], 0.3, provenance={**same, "data_fingerprint": "e" * 64})
    report = write_report(find_runs([tmp_path / "same"])[0], tmp_path / "out")
    code = "Warning: the runs in this table come from different code (detlab 0.1.0 at aaaaaaaaaa: 5 runs"
    assert code in report.markdown and "aaaaaaaaaa with uncommitted changes: 1 runs (e.g. " in report.markdown
    data = "Warning: the runs in this table come from different data (data dddddddddddd: 5 runs"
    assert data in report.markdown and "data eeeeeeeeeeee: 1 runs" in report.markdown
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 2


def test_pareto_front_by_hand():
    # (ms, AP): b is dominated by a (slower, less accurate); d by c (same speed, less accurate)
    points = [(10, 30), (12, 29), (20, 35), (20, 34), (40, 36)]
    assert pareto_front(points) == [0, 2, 4]


def test_baseline_that_matches_nothing_lists_the_configurations(sweep, tmp_path):
    with pytest.raises(ReportError, match="gamma2_alpha0.25"):
        write_report(find_runs([sweep])[0], tmp_path / "out", baseline="focal_gamma=gamma1")


def test_baseline_value_as_the_command_line_reads_it(tmp_path):
    # Hydra's sweeper writes a bool level as `False` where the user (and a study's config) types `false`
    for seed in range(2):
        for ties, ap in (("False", 0.2), ("True", 0.3)):
            fake_run(tmp_path / "runs", f"{ties}{seed}", [f"model.assigner.all_ties={ties}", f"seed={seed}"], ap)
    runs = find_runs([tmp_path / "runs"])[0]
    report = write_report(runs, tmp_path / "out", baseline="model.assigner.all_ties=false")
    assert "| False (baseline) | 2 |" in report.markdown
    with pytest.raises(ReportError, match="matches no configuration"):
        write_report(runs, tmp_path / "out", baseline="all_ties=0.5")
    # a configuration without the factor's override is named as the table names it, and chosen by that name
    fake_run(tmp_path / "runs", "unset", ["seed=0"], 0.1)
    runs = find_runs([tmp_path / "runs"])[0]
    with pytest.raises(ReportError, match="model.assigner.all_ties=default$"):
        write_report(runs, tmp_path / "out", baseline="all_ties=0.5")
    assert "| default (baseline) | 1 |" in write_report(runs, tmp_path / "out", baseline="all_ties=default").markdown


def test_unfinished_and_pruned_runs_are_listed_not_averaged(sweep, tmp_path):
    (sweep / "9" / ".hydra").mkdir(parents=True)
    (sweep / "9" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["experiment/focal_gamma=gamma1_alpha0.25"]))
    pruned = json.loads((sweep / "0" / "results.json").read_text())
    (sweep / "0" / "results.json").write_text(json.dumps({**pruned, "pruned": {"epoch": 1}}))
    runs, left_out = find_runs([sweep])
    assert len(runs) == 8 and left_out == [sweep / "0", sweep / "9"]
    report = write_report(runs, tmp_path / "out", left_out=left_out)
    assert "left out: " + str(sweep / "0") + ", " + str(sweep / "9") in report.markdown


def test_command_line_writes_into_experiments_of_the_study(sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main([str(sweep), "--baseline", "focal_gamma=gamma0_alpha0.75", "--metrics", "AP", "ms_per_img"])
    out = tmp_path / "experiments" / "focal_gamma"
    written = {p.name for p in out.iterdir()}
    assert written >= {"results.md", "results.csv", "runs.csv", "speed_accuracy.png", "metrics.png"}
    assert "| focal_gamma | n | AP | ms_per_img |" in capsys.readouterr().out


def test_command_line_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "nowhere")])
    assert stop.value.code == 2 and "nowhere: no such folder" in capsys.readouterr().err
    fake_run(tmp_path / "runs", "0", ["seed=0"], 0.3)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "runs"), "--metrics", "AP", "mAP", "--output", str(tmp_path / "o")])
    assert "no run recorded ['mAP']" in capsys.readouterr().err
    cut = tmp_path / "runs" / "0" / "results.json"
    cut.write_text(cut.read_text()[:40])  # a results.json cut short: the error said "Expecting ',' delimiter" alone
    with pytest.raises(SystemExit):
        main([str(tmp_path / "runs"), "--output", str(tmp_path / "o")])
    assert f"{cut} is not valid JSON" in capsys.readouterr().err
    fake_run(tmp_path / "runs", "0b", ["seed=1"], 0.3)
    for output in (tmp_path / "runs" / "0b" / "results.json", tmp_path / "runs" / "0b" / "results.json" / "out"):
        with pytest.raises(SystemExit) as stop:  # a file given as --output (or a folder inside one)
            main([str(tmp_path / "runs" / "0b"), "--output", str(output)])
        assert stop.value.code == 2 and "a file is in the way of the report's folder" in capsys.readouterr().err


def test_wandb_summary_run_offline(sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    main([str(sweep), "--output", str(tmp_path / "out"), "--wandb", "--baseline", "focal_gamma=gamma0_alpha0.75"])
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    tables = list(runs[0].rglob("report/table_*.table.json"))
    assert tables, sorted(str(p) for p in runs[0].rglob("*"))
    table = json.loads(tables[0].read_text())
    assert [row[0] for row in table["data"]] == ["gamma0_alpha0.75", "gamma2_alpha0.25", "gamma5_alpha0.25"]
    assert table["data"][1][table["columns"].index("AP")] == pytest.approx(0.32)


def test_wandb_summary_run_disabled_names_no_folder(sweep, tmp_path, monkeypatch, capsys):
    """WANDB_MODE=disabled: the report said its summary run was in a folder W&B never made."""
    import wandb

    wandb.teardown()  # W&B keeps the settings of a process's first run (an earlier test's offline) for later runs
    monkeypatch.setenv("WANDB_MODE", "disabled")
    try:
        main([str(sweep), "--output", str(tmp_path / "out"), "--wandb"])
    finally:
        wandb.teardown()  # and this one's (disabled) for the next tests'
    assert "W&B summary run: none (WANDB_MODE=disabled)\n" in capsys.readouterr().out
    assert not (tmp_path / "out" / "wandb").exists()


def test_a_value_written_two_ways_is_no_factor(tmp_path):
    """The runs of a configuration are grouped by value, and so are its factors: a run's `false` and `.5` and a
    multirun job's `False` and `0.5` (Hydra's parser reads each pair as one value) made a column of their own, each
    row labelled with its spelling, and the setting was missing from the overrides shared by every run."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from detlab.report.runs import common_overrides, factors

    parser = OverridesParser.create()
    for typed, written in (("false", "False"), (".5", "0.5")):
        assert parser.parse_override(f"k={typed}").value() == parser.parse_override(f"k={written}").value()
    fake_run(tmp_path / "run", "0", ["model=ssd300", "trainer.enable_progress_bar=false", "loss.alpha=.5"], 0.4)
    for job, model in enumerate(("retinanet", "yolov3")):
        fake_run(tmp_path / "sweep", str(job), [f"model={model}", "trainer.enable_progress_bar=False", "loss.alpha=0.5"], 0.5)
    groups = group_runs(find_runs([tmp_path / "run", tmp_path / "sweep"])[0])
    assert len(groups) == 3 and factors(groups) == ["model"]
    assert common_overrides(groups) == {"trainer.enable_progress_bar": "false", "loss.alpha": ".5"}
    text = write_report(find_runs([tmp_path / "run", tmp_path / "sweep"])[0], tmp_path / "out").markdown
    assert "Common overrides: `trainer.enable_progress_bar=false loss.alpha=.5`" in text
    assert "| model | n | AP | AP50 | AP75 |" in text and "| retinanet | 1 |" in text


def test_speed_accuracy_names_the_configurations_it_cannot_draw(tmp_path):
    """A configuration whose runs measured no speed has no point on the plot; the table shows it with "–", and the
    figure left it out without a word. Its caption now names it."""
    for loss in ("ce", "focal", "bce"):
        for seed in range(2):
            fake_run(tmp_path / "runs", f"{loss}{seed}", [f"loss={loss}", f"seed={seed}"], 0.3,
                     ms=None if loss == "bce" else 20.0 + seed)
    rows = compare(group_runs(find_runs([tmp_path / "runs"])[0]), ["AP", "ms_per_img"], None)
    fig = plot_speed_accuracy(rows, tmp_path / "s.png")
    assert len(fig.axes[0].containers) == 2  # the error bars of ce and focal
    assert fig.get_supxlabel().endswith("; without ms_per_img or AP, not drawn: bce")


def test_two_factors_of_one_short_name_keep_a_column_each(tmp_path):
    """A COCO run (data.train.img_dir) and a VOC run (data.source.shared.img_dir) in one report: both factors were
    the column img_dir, which showed the second's value in every row (the COCO run's img_dir as `default`)."""
    fake_run(tmp_path / "runs", "coco", ["data=coco", "data.train.img_dir=coco/train2017"], 0.3, 20.0)
    fake_run(tmp_path / "runs", "voc", ["data=voc", "data.source.shared.img_dir=images"], 0.2, 20.0)
    report = write_report(find_runs([tmp_path / "runs"])[0], tmp_path / "out")
    assert "| data | data.train.img_dir | data.source.shared.img_dir | n |" in report.markdown
    assert "| coco | coco/train2017 | default | 1 |" in report.markdown
    assert "| voc | default | images | 1 |" in report.markdown
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert {(r["data.train.img_dir"], r["data.source.shared.img_dir"]) for r in rows.values()} == {
        ("coco/train2017", "default"), ("default", "images")}


def test_the_multiruns_record_command_runs_as_printed(tmp_path, capsys):
    """The command the multirun's report prints to record it must run in a shell as printed: tv_parity's baseline
    names two keys ("tv_parity=detlab focal_gamma=gamma2_alpha0.25"), one argument of --baseline once quoted."""
    import shlex

    from omegaconf import OmegaConf

    from detlab.report.study import ReportCallback

    for job, (arm, pair, seed) in enumerate([(a, p, s) for a in ("detlab", "torchvision")
                                            for p in ("gamma2_alpha0.25", "gamma0_alpha0.75") for s in (0, 1)]):
        overrides = [f"experiment/tv_parity@_global_={arm}", f"experiment/focal_gamma={pair}", f"seed={seed}",
                     "experiment=tv_parity"]
        fake_run(tmp_path / "my sweep", str(job), overrides, 0.1 + 0.01 * job + 0.003 * seed, study="tv_parity")
    baseline = "tv_parity=detlab focal_gamma=gamma2_alpha0.25"
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "my sweep")}}})
    ReportCallback(baseline=baseline).on_multirun_end(config)
    printed = capsys.readouterr().out
    command = printed.split("(to record it: ")[1].rsplit(")", 1)[0]
    words = shlex.split(command)  # what a POSIX shell passes to the program
    assert words[:2] == ["detlab-report", str(tmp_path / "my sweep")] and words[words.index("--baseline") + 1] == baseline
    main([*words[1:], "--output", str(tmp_path / "recorded")])
    assert "| detlab (baseline) | gamma2_alpha0.25 | 2 |" in (tmp_path / "recorded" / "results.md").read_text()


@pytest.mark.parametrize(("file", "text", "said"), [
    (".hydra/overrides.yaml", "- loss=ce\n- seed: [0", "is not valid YAML"),  # cut short
    (".hydra/overrides.yaml", "loss=ce seed=0", "is not Hydra's list of overrides"),  # was read letter by letter
    (".hydra/overrides.yaml", "loss: ce\nseed: 0", "is not Hydra's list of overrides"),
    ("results.json", "[0.3]", "has no \"metrics\" object"),
    ("results.json", '{"metrics": {"AP": "n/a"}}', "is not a run's results"),
    ("results.json", '{"metrics": {"AP": 0.3}, "speed": {"latency_ms": {"total": {"median": 2}}}}',
     "is not a run's results"),  # no p90 beside its median
])
def test_a_run_file_edited_by_hand_stops_the_report_naming_it(tmp_path, capsys, file, text, said):
    """A run's results.json or overrides.yaml that is not what detlab-train and Hydra write (a record's overrides are
    relabelled by hand, experiments/tv_parity) is one message naming the file, exit 2: not a traceback from yaml or
    float(), and not an overrides string split into one-letter keys ("l= o= s= ...") and reported as a configuration."""
    run = fake_run(tmp_path / "runs", "0", ["loss=ce", "seed=0"], 0.3)
    (run / file).write_text(text)
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "runs"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"{run / file} {said}" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "results.md").exists()
