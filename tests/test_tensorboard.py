"""A real TensorBoard server reads our event files: per-agent scalars (one run per agent, so one
series per agent), histograms, heatmaps, the Custom Scalars layout and the config text, checked
against metrics.jsonl."""
import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from marl.config import config_from_dict
from marl.logger import read_metrics
from marl.run import new_run
from tests.conftest import tiny_config


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, path, **params):
    query = ("?" + urllib.parse.urlencode(params)) if params else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}{query}", timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("tb") / "run"
    cfg = tiny_config(env={"id": "diag:lazy_agent", "kwargs": {}},
                      algo={"advantage": "coma", "rollout_steps": 10, "minibatches": 2},
                      log={"histogram_every": 1, "credit_image_every": 2, "fidelity_every": 2,
                           "fidelity_episodes": 2})
    trainer = new_run(config_from_dict(cfg), run)
    trainer.train()
    trainer.close()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(run), "--host", "127.0.0.1",
                             "--port", str(port), "--load_fast=false", "--reload_interval", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while True:
            try:
                tags = _get(port, "/data/plugin/scalars/tags")
                if all("return" in tags.get(f"agent_{i}", {}) for i in range(3)) and "team_return" in tags.get(".", {}):
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("tensorboard did not serve the run in time")
            time.sleep(0.5)
        yield run, port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


FAMILIES = ("return", "reward_return", "credit/abs_adv", "credit/share", "credit/adv_mean", "coma/gap",
            "coma/baseline", "entropy", "value_error", "credit_fidelity/share")


def test_per_agent_scalars_are_one_series_per_agent_matching_metrics_jsonl(served_run):
    run, port = served_run
    records = read_metrics(run)
    tags = _get(port, "/data/plugin/scalars/tags")
    agents = ["agent_0", "agent_1", "agent_2"]
    assert set(tags) == {".", *agents}   # TensorBoard shows each agent as a run named by the agent
    for family in FAMILIES:
        assert [a for a in tags if family in tags[a]] == agents, family   # one series per agent
        for agent in agents:
            served = _get(port, "/data/plugin/scalars/scalars", run=agent, tag=family)
            expected = [(r["env_steps"], r[f"{family}/{agent}"]) for r in records
                        if r.get(f"{family}/{agent}") is not None]
            assert [s for _, s, _ in served] == [s for s, _ in expected]
            assert [v for _, _, v in served] == pytest.approx([v for _, v in expected], rel=1e-5, abs=1e-6)
    for tag in ("team_return", "losses/approx_kl", "losses/clip_fraction", "losses/grad_norm",
                "explained_variance", "perf/env_steps_per_s", "credit_fidelity/overall"):
        assert tag in tags["."], tag
    assert not any("/agent_" in tag for tag in tags["."])


def test_histograms_heatmaps_layout_and_config_are_served(served_run):
    from marl.logger import CHART_GROUPS

    _, port = served_run
    histograms = _get(port, "/data/plugin/histograms/tags")
    assert all("credit/adv_hist" in histograms[f"agent_{i}"] for i in range(3))
    images = _get(port, "/data/plugin/images/tags")["."]
    assert images["credit/heatmap"]["samples"] >= 1
    layout = _get(port, "/data/plugin/custom_scalars/layout")
    categories = [c["title"] for c in layout["category"]]
    assert categories == [title for title, _ in CHART_GROUPS]   # COMA's charts are there for a COMA run
    charts = {c["title"]: c["multiline"]["tag"] for cat in layout["category"] for c in cat["chart"]}
    assert charts["credit share mean|A_i| / sum_j mean|A_j|"] == [r"^credit/share$"]
    tags = _get(port, "/data/plugin/scalars/tags")
    # No chart without data: a COMA run (a Q critic) has no V(s) attribution, and no periodic evaluation here.
    assert "integrated-gradients share of V(s): the agent's part of the state" not in charts
    assert "greedy evaluation return (train.eval_every)" not in charts
    for title, (pattern,) in charts.items():
        assert any(pattern == f"^{re.escape(tag)}$" for run_tags in tags.values() for tag in run_tags), title
    text = _get(port, "/data/plugin/text/tags")["."]
    assert "config/text_summary" in text


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_custom_scalars_screenshot_shows_one_coloured_line_per_agent(served_run, tmp_path):
    """A real browser renders the Custom Scalars tab: the agents' runs are drawn in TensorBoard's
    first run colours (agent_0 blue, agent_1 red, agent_2 light blue after the team run '.')."""
    import shutil

    from matplotlib.image import imread

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium (apt-get install chromium)")
    _, port = served_run
    shot = tmp_path / "tb.png"
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1500,1100",
                    "--virtual-time-budget=25000", f"--screenshot={shot}", f"http://127.0.0.1:{port}/#custom_scalars"],
                   check=True, capture_output=True, timeout=240)
    pixels = (imread(shot)[..., :3] * 255).round().astype(int)
    assert pixels.shape[:2] == (1100, 1500)
    colours = {tuple(c) for c in pixels[:, 400:].reshape(-1, 3)}   # the charts, right of the runs list
    # TensorBoard's palette for runs 2-4 (agent_0, agent_1, agent_2), as drawn in the charts
    for rgb in ((0, 119, 187), (204, 51, 17), (51, 187, 238)):
        assert any(max(abs(a - b) for a, b in zip(rgb, c)) <= 6 for c in colours), rgb


def _layout(run_dir):
    """The Custom Scalars layout TensorBoard uses for ``run_dir``: the last one written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    layout = layout_pb2.Layout()
    layout.ParseFromString(events.Tensors(metadata.CONFIG_SUMMARY_TAG)[-1].tensor_proto.string_val[0])
    return {c.title: [chart.title for chart in c.chart] for c in layout.category}


def test_layout_lists_only_the_families_logged_and_keeps_them_on_resume(tmp_path):
    from marl.logger import RunLogger

    logger = RunLogger(tmp_path, ["a", "b"])
    logger.log({"iteration": 1, "env_steps": 10, "team_return": 3.0, "return/a": 1.0, "return/b": 2.0}, 10)
    logger.log({"iteration": 2, "env_steps": 20, "credit/share/a": 0.5, "credit/share/b": 0.5}, 20)
    logger.close()
    assert _layout(tmp_path) == {"returns per agent": ["episode return (raw env reward)"],
                                 "credit per agent": ["credit share mean|A_i| / sum_j mean|A_j|"]}
    logger = RunLogger(tmp_path, ["a", "b"], purge_step=21)   # a resume: the families seen so far stay listed
    logger.log({"iteration": 3, "env_steps": 30, "entropy/a": 1.0, "entropy/b": 1.1}, 30)
    logger.close()
    assert _layout(tmp_path) == {"returns per agent": ["episode return (raw env reward)"],
                                 "credit per agent": ["credit share mean|A_i| / sum_j mean|A_j|"],
                                 "policy and critic per agent": ["policy entropy"]}
