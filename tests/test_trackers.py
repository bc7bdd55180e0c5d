"""MLflow and W&B trackers (``log.trackers``): a real local ``mlflow server`` with a sqlite backend,
read back through its client; W&B offline, its run file read back. Each must hold the resolved
config, every scalar of ``metrics.jsonl`` at the same env steps (per-agent ones included), the
credit figures and ``eval.json``."""
import json
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from marl.config import ConfigError, config_from_dict
from tests.conftest import tiny_config, train_run

FAMILIES = ["team_return", "return/agent_0", "credit/share/agent_1", "coma/gap/agent_2", "entropy/agent_0",
            "credit_fidelity/share/agent_2", "losses/policy"]


def _cfg(trackers):
    return tiny_config(env={"id": "diag:lazy_agent", "kwargs": {}},
                       algo={"advantage": "coma", "rollout_steps": 10, "minibatches": 2},
                       log={"histogram_every": 0, "credit_image_every": 4, "fidelity_every": 2, "fidelity_episodes": 2,
                            "trackers": trackers})


def _expected(records):
    """Every finite scalar of the metrics file: ``{key: [(env_steps, value), ...]}``."""
    out = {}
    for r in records:
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(k, []).append((r["env_steps"], float(v)))
    return out


def _same(got, points, key):
    assert [s for s, _ in got] == [s for s, _ in points], key
    assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), key


def test_a_tracker_not_installed_or_unknown_is_one_line(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"log.trackers': tracker 'wandb' needs the 'wandb' extra.*\.\[wandb\]"):
        config_from_dict(_cfg(["tensorboard", "wandb"]))
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'"):
        config_from_dict(_cfg(["neptune"]))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_mlflow_server_holds_config_scalars_and_artifacts(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
            time.sleep(1)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        records, evaluation = train_run(_cfg(["jsonl", "mlflow"]), tmp_path / "run")
        assert not list((tmp_path / "run").glob("events.out.tfevents*"))   # tensorboard was not asked for

        client = MlflowClient(uri)
        run_id = json.loads((tmp_path / "run" / "trackers.json").read_text())["mlflow_run_id"]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == "run"
        assert run.data.params["algo.advantage"] == "coma" and run.data.params["env.id"] == "diag:lazy_agent"
        assert json.loads(run.data.params["log.trackers"]) == ["jsonl", "mlflow"]
        expected = _expected(records)
        assert all(f in expected for f in FAMILIES)
        for key, points in expected.items():
            history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            _same(history, points, key)
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert "eval.json" in artifacts
        heatmaps = [a.path for a in client.list_artifacts(run_id, "credit/heatmap")]
        assert len(heatmaps) >= 2 and all(p.endswith(".png") for p in heatmaps)
        local = client.download_artifacts(run_id, "eval.json", str(tmp_path))
        assert json.loads(Path(local).read_text())["team_return_mean"] == evaluation["team_return_mean"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wandb_records(path):
    """The protobuf records of a W&B ``.wandb`` run file (a LevelDB-style log: 32 KiB blocks, each
    record chunk behind a 7-byte header: CRC, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        if left < 7 or (kind == 0 and length == 0):   # block padding
            pos += left
            continue
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            out.append(record)
            chunks = b""
    return out


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_wandb_offline_run_holds_config_scalars_and_artifacts(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    records, _ = train_run(_cfg(["tensorboard", "jsonl", "wandb"]), tmp_path / "run")
    (path,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    deadline = time.time() + 60   # wandb-core, a separate process, may still be writing the file's tail
    while (_wandb_records(path) or [None])[-1] is None or _wandb_records(path)[-1].WhichOneof("record_type") != "exit":
        assert time.time() < deadline, "the W&B run file has no exit record"
        time.sleep(0.5)
    history, config, artifacts = [], {}, []
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind in ("config", "run"):
            items = record.config.update if kind == "config" else record.run.config.update
            config.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
        elif kind == "artifact":
            artifacts.append([e.path for e in record.artifact.manifest.contents])
    algo = config["algo"].get("value", config["algo"])   # W&B may wrap a config value as {"value": ...}
    assert algo["advantage"] == "coma"
    for key, points in _expected(records).items():
        if key == "env_steps":   # W&B's x axis, logged with every row (the images' included)
            continue
        got = sorted((h["env_steps"], h[key]) for h in history if key in h)
        _same(got, points, key)
    images = [{k.rpartition("/")[2]: v for k, v in h.items() if k.startswith("credit/heatmap/")}   # nested keys
              for h in history if "credit/heatmap/_type" in h]
    assert len(images) >= 2 and all(i["_type"] == "image-file" for i in images)
    assert all((path.parent / "files" / i["path"]).is_file() for i in images)
    assert ["eval.json"] in artifacts
