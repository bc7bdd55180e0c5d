"""A real TensorBoard server reads our event files: per-agent scalars, histograms, heatmaps,
the custom per-agent layout and the config text, checked against metrics.jsonl."""
import json
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
                if "return/agent_0" in _get(port, "/data/plugin/scalars/tags").get(".", {}):
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


def test_per_agent_scalars_match_metrics_jsonl(served_run):
    run, port = served_run
    records = read_metrics(run)
    tags = _get(port, "/data/plugin/scalars/tags")["."]
    for agent in ("agent_0", "agent_1", "agent_2"):
        for prefix in ("return", "reward_return", "credit/abs_adv", "credit/share", "credit/adv_mean",
                       "coma/gap", "coma/baseline", "entropy", "value_error", "credit_fidelity/share"):
            tag = f"{prefix}/{agent}"
            assert tag in tags, tag
            served = _get(port, "/data/plugin/scalars/scalars", run=".", tag=tag)
            expected = [(r["env_steps"], r[tag]) for r in records if r.get(tag) is not None]
            assert [s for _, s, _ in served] == [s for s, _ in expected]
            assert [v for _, _, v in served] == pytest.approx([v for _, v in expected], rel=1e-5, abs=1e-6)
    for tag in ("team_return", "losses/approx_kl", "losses/clip_fraction", "losses/grad_norm",
                "explained_variance", "perf/env_steps_per_s", "credit_fidelity/overall"):
        assert tag in tags, tag


def test_histograms_heatmaps_layout_and_config_are_served(served_run):
    run, port = served_run
    histograms = _get(port, "/data/plugin/histograms/tags")["."]
    assert {f"credit/adv_hist/agent_{i}" for i in range(3)} <= set(histograms)
    images = _get(port, "/data/plugin/images/tags")["."]
    assert images["credit/heatmap"]["samples"] >= 1
    layout = _get(port, "/data/plugin/custom_scalars/layout")
    charts = {c["title"]: c["multiline"]["tag"] for c in layout["category"][0]["chart"]}
    assert charts["credit share mean|A_i| / sum_j mean|A_j|"] == ["^credit/share/"]
    text = _get(port, "/data/plugin/text/tags")["."]
    assert "config/text_summary" in text
