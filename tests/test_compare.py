"""marl.compare: grouping run directories by config, the comparison table and figure, bad input."""
import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rliable", reason="marl.compare needs rliable")

from marl.compare import (CompareError, NoMetricsError, NotARunDirectoryError, add_arguments,
                          bootstrap_interval, compare_runs, iqm_interval, load_run, run_from_args)
from marl.config import config_from_dict, load_config
from marl.logger import read_metrics
from marl.run import final_evaluation, new_run
from tests.conftest import tiny_config

REPS = 300   # bootstrap resamples: enough for the checks here, and fast
QUIET = {"credit_image_every": 0, "histogram_every": 0}


def _train(cfg, run_dir: Path, evaluate: bool) -> Path:
    trainer = new_run(cfg, run_dir)
    try:
        trainer.train()
        if evaluate:
            final_evaluation(trainer)
    finally:
        trainer.close()
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """2 configs x 2 seeds of 400 env steps on simple_spread: gae runs end with eval.json, td_lambda
    runs do not; plus one short run on another env (diag:penalty)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, algo, evaluate in (("gae", {}, True), ("td", {"advantage": "td_lambda"}, False)):
        for seed in (0, 1):
            cfg = config_from_dict(tiny_config(seed=seed, algo=algo, log=QUIET))
            out[f"{name}-s{seed}"] = _train(cfg, root / f"{name}-s{seed}", evaluate)
    cfg = load_config("configs/diag_penalty.yaml", ["train.total_env_steps=128", "train.progress=false",
                                                    "train.eval_episodes=0", "log.fidelity_every=0",
                                                    "log.credit_image_every=0", "log.histogram_every=0"])
    out["penalty"] = _train(cfg, root / "penalty-s0", False)
    return out


def _group(result, label):
    return next(g for g in result["groups"] if g["label"] == label)


def test_groups_table_and_figure(runs, tmp_path):
    dirs = [runs[k] for k in ("td-s1", "gae-s0", "td-s0", "gae-s1")]
    result = compare_runs(dirs, tmp_path / "cmp.png", tmp_path / "cmp.md", reps=REPS)
    assert result["differing_keys"] == ["algo.advantage"]
    assert [g["label"] for g in result["groups"]] == ["algo.advantage=td_lambda", "algo.advantage=gae"]
    gae, td = _group(result, "algo.advantage=gae"), _group(result, "algo.advantage=td_lambda")
    assert gae["seeds"] == td["seeds"] == [0, 1]
    assert gae["env_steps"] == [400, 400]

    # The final return: eval.json when there is one (IQM of 2 values = their mean), else training returns.
    evals = [json.loads((runs[k] / "eval.json").read_text())["team_return_mean"] for k in ("gae-s0", "gae-s1")]
    fr = gae["final_return"]
    assert fr["sources"] == ["eval.json", "eval.json"]
    assert fr["iqm"] == pytest.approx(np.mean(evals))
    assert fr["ci"][0] <= fr["iqm"] <= fr["ci"][1]
    assert all(s.startswith("training team_return") for s in td["final_return"]["sources"])
    assert td["curve_source"] == "team_return"

    # Wall time: the sum of Δenv_steps / env_steps_per_s over the records.
    records, prev, wall = read_metrics(runs["gae-s0"]), 0, 0.0
    for r in records:
        wall += (r["env_steps"] - prev) / r["perf/env_steps_per_s"]
        prev = r["env_steps"]
    assert gae["wall_s"][0] == pytest.approx(wall)
    assert gae["env_steps_per_s"][0] == pytest.approx(400 / wall)

    # Credit shares: the last logged value per agent, summing to 1 in each run.
    assert list(gae["credit_share"]) == ["agent_0", "agent_1", "agent_2"]
    for i in range(2):
        assert sum(s["per_run"][i] for s in gae["credit_share"].values()) == pytest.approx(1.0, abs=1e-6)
    last = records[-1]
    assert gae["credit_share"]["agent_1"]["per_run"][0] == pytest.approx(last["credit/share/agent_1"])

    md = (tmp_path / "cmp.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| algo.advantage=gae | mpe2:simple_spread_v3 |"))
    assert "| 0, 1 |" in row and f"{fr['iqm']:.2f} [{fr['ci'][0]:.2f}, {fr['ci'][1]:.2f}]" in row
    assert "| 400 |" in row and "agent_0 " in row
    assert "gae-s1" in md and "## Config keys that differ" in md
    png = (tmp_path / "cmp.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def _with_eval_curve(runs, tmp_path) -> list:
    """Copies of the td runs with two periodic evaluations appended: -80 at 200 steps, then -70 (seed
    0) or -71 (seed 1) at 400."""
    dirs = []
    for k in ("td-s0", "td-s1"):
        d = shutil.copytree(runs[k], tmp_path / k)
        with open(d / "metrics.jsonl", "a") as f:
            for steps, ret in ((200, -80.0), (400, -70.0 - int(k[-1]))):
                f.write(json.dumps({"env_steps": steps, "eval/team_return": ret}) + "\n")
        dirs.append(d)
    return dirs


def test_eval_team_return_is_preferred(runs, tmp_path):
    """Runs that logged periodic greedy evaluations are plotted and scored by them."""
    dirs = _with_eval_curve(runs, tmp_path)
    result = compare_runs(dirs, tmp_path / "e.png", tmp_path / "e.md", reps=REPS)
    (g,) = result["groups"]
    assert g["curve_source"] == "eval/team_return"
    assert g["final_return"]["per_run"] == [-70.0, -71.0]
    assert g["final_return"]["sources"] == ["eval/team_return"] * 2
    assert g["label"] == "td"   # nothing differs between groups: the run directories' stem


def test_time_to_reach_a_return(runs, tmp_path):
    """--target R: per group, the env steps and wall-clock seconds at the first point of the return
    curve at or above R (median over the seeds that got there), in the summary and the report."""
    dirs = _with_eval_curve(runs, tmp_path)
    wall_at_400 = next(r["perf/wall_s"] for r in read_metrics(dirs[0]) if r["env_steps"] == 400 and "perf/wall_s" in r)
    result = compare_runs(dirs, tmp_path / "t.png", tmp_path / "t.md", reps=REPS, targets=[-90.0, -70.5, -60.0])
    (g,) = result["groups"]
    first, half, never = (g["time_to"][t] for t in ("-90", "-70.5", "-60"))
    assert first["reached"] == 2 and first["median_env_steps"] == 200
    assert half["reached"] == 1 and half["per_run"][1] is None
    assert half["per_run"][0]["env_steps"] == 400 and half["median_seconds"] == pytest.approx(wall_at_400)
    assert never["reached"] == 0 and never["median_seconds"] is None
    report = (tmp_path / "t.md").read_text()
    assert "## Time to reach a return" in report and "not reached" in report and "1 of 2" in report


def test_single_run_has_no_band_or_ci(runs, tmp_path):
    result = compare_runs([runs["gae-s0"]], tmp_path / "one.png", tmp_path / "one.md", reps=REPS)
    (g,) = result["groups"]
    assert g["label"] == "gae" and g["final_return"]["ci"] is None
    assert g["credit_share"]["agent_0"]["ci"] is None
    row = next(line for line in (tmp_path / "one.md").read_text().splitlines() if line.startswith("| gae |"))
    assert f"| {g['final_return']['iqm']:.2f} |" in row
    assert (tmp_path / "one.png").stat().st_size > 10_000


def test_different_envs_are_grouped_separately(runs, tmp_path):
    result = compare_runs([runs["gae-s0"], runs["penalty"], runs["gae-s1"]], tmp_path / "d.png",
                          tmp_path / "d.md", reps=REPS)
    assert [g["env"] for g in result["groups"]] == ["mpe2:simple_spread_v3", "diag:penalty"]
    assert [len(g["runs"]) for g in result["groups"]] == [2, 1]
    assert "env.id" in result["differing_keys"]
    labels = [g["label"] for g in result["groups"]]
    # many keys differ: the first one (by priority) that tells the groups apart, not directory names
    assert labels == ["env.id=mpe2:simple_spread_v3 (+13 more)", "env.id=diag:penalty (+13 more)"]
    assert list(result["groups"][1]["credit_share"]) == ["agent_0", "agent_1"]


def test_bad_input_errors(runs, tmp_path):
    def check(exc_type, dirs, names):
        with pytest.raises(exc_type) as info:
            compare_runs(dirs, tmp_path / "x.png", tmp_path / "x.md", reps=REPS)
        assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
        assert str(names) in str(info.value)
        return str(info.value)

    check(NotARunDirectoryError, [tmp_path / "nope"], tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "no config.yaml" in check(NotARunDirectoryError, [runs["gae-s0"], tmp_path / "empty"], tmp_path / "empty")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(runs["gae-s0"] / "config.yaml", bare)
    assert "no metrics.jsonl" in check(NoMetricsError, [bare], bare)
    (bare / "metrics.jsonl").write_text("\n")
    check(NoMetricsError, [bare], bare)
    (bare / "metrics.jsonl").write_text('{"env_steps": 100}\nnot json\n{"env_steps": 200}\n')
    assert "line 2" in check(CompareError, [bare], bare)
    (bare / "metrics.jsonl").write_text('{"env_steps": 100, "team_return": -1.0}\n{"env_st')   # cut short
    assert load_run(bare).env_steps == 100
    check(CompareError, [runs["gae-s0"], runs["gae-s0"]], runs["gae-s0"])
    with pytest.raises(CompareError, match="no run directories"):
        compare_runs([], tmp_path / "x.png", tmp_path / "x.md")
    assert not (tmp_path / "x.png").exists()


def test_cli_helpers(runs, tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(runs["gae-s0"]), str(runs["gae-s1"]), "--out", str(tmp_path / "c"),
                              "--reps", str(REPS)])
    printed = []
    assert run_from_args(args, printed.append) == 0
    assert "| gae |" in printed[0] and (tmp_path / "c" / "compare.png").is_file()
    before = (tmp_path / "c" / "compare.md").read_text()
    with pytest.raises(CompareError, match="--out .* is not empty"):   # never over an older result
        run_from_args(args, printed.append)
    assert (tmp_path / "c" / "compare.md").read_text() == before


def test_bootstrap_interval_is_rliable_iqm_and_deterministic():
    values = [-60.0, -57.0, -56.0, -55.0, -54.0]
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a, b = iqm_interval(values, reps=REPS, seed=7), iqm_interval(values, reps=REPS, seed=7)
    assert np.array_equal(np.random.get_state()[1], before)   # the global generator is left as it was
    assert a == b and a["n"] == 5
    assert a["iqm"] == pytest.approx(np.mean([-57.0, -56.0, -55.0]))   # the middle 3 of 5
    assert min(values) <= a["ci"][0] <= a["iqm"] <= a["ci"][1] <= max(values)
    assert iqm_interval([1.0, float("nan")])["ci"] is None
    point, low, high, n = bootstrap_interval(np.array([[0.2, 0.8], [0.4, 0.6]]), "mean", reps=REPS)
    assert n == 2 and point == pytest.approx([0.3, 0.7]) and (low <= point).all() and (point <= high).all()


def _fake_run(path: Path, steps: int, name_steps: int, seed: int) -> Path:
    """A run directory of ``steps`` env steps (metrics written here: the figure's layout is under test)."""
    path.mkdir(parents=True)
    cfg = config_from_dict(tiny_config(seed=seed, train={"total_env_steps": name_steps}))
    (path / "config.yaml").write_text(cfg.to_yaml())
    rows = [{"iteration": i + 1, "env_steps": int(s), "team_return": -80.0 + 20 * s / steps + seed, "perf/wall_s": s / 1e3}
            for i, s in enumerate(np.linspace(steps / 20, steps, 20).astype(int))]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_figure_is_readable_log_axis_for_runs_10x_apart_and_no_overlapping_ticks(tmp_path):
    from marl.compare import comparison_figure_of

    dirs = [_fake_run(tmp_path / f"spread_mappo-20261207-1530{s}{k}", steps, steps, s)
            for k, steps in enumerate((20_000, 2_000_000)) for s in (0, 1)]
    result = compare_runs(dirs, tmp_path / "c.png", tmp_path / "c.md", reps=REPS)
    assert [g["label"] for g in result["groups"]] == ["train.total_env_steps=20000", "train.total_env_steps=2000000"]
    fig = comparison_figure_of(dirs, reps=REPS)
    ax_steps, ax_time = fig.axes[:2]
    assert ax_steps.get_xscale() == "log" and ax_time.get_xscale() == "log"
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(fig).get_renderer()
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
        boxes = [b for b in boxes if ax.get_window_extent(renderer).x0 - 5 <= b.x0 <= ax.get_window_extent(renderer).x1 + 5]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), ax.get_title()
    # the same config under marl train's default directory names: labelled by its name, less the time stamp
    same = [_fake_run(tmp_path / f"spread_mappo-2026120{d}-153000", 20_000, 20_000, 0) for d in (1, 2)]
    assert compare_runs(same, tmp_path / "s.png", tmp_path / "s.md", reps=REPS)["groups"][0]["label"] == "spread_mappo"
