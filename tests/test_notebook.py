"""The analysis notebook runs top to bottom (with nbclient) on tiny runs, so it cannot rot."""
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from marl.config import config_from_dict
from marl.run import new_run
from tests.test_credit import LAZY


def test_credit_analysis_notebook_executes(tmp_path, monkeypatch):
    runs = {}
    for label, advantage in (("COMA", "coma"), ("GAE", "gae")):
        cfg = config_from_dict({**LAZY, "algo": {**LAZY["algo"], "advantage": advantage},
                                "train": {**LAZY["train"], "total_env_steps": 400}})
        trainer = new_run(cfg, tmp_path / label)
        trainer.train()
        trainer.close()
        runs[label] = str(tmp_path / label)
    monkeypatch.setenv("MARL_NOTEBOOK_RUNS", ",".join(f"{k}={v}" for k, v in runs.items()))
    path = Path("notebooks/credit_analysis.ipynb")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "| COMA |" in text and "| GAE |" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3


def test_sweep_comparison_notebook_executes_on_a_sweep_directory(tmp_path, monkeypatch):
    """A sweep directory as ``marl sweep`` leaves it (its trials run here in process, as each Ray
    worker runs them), read by the notebook."""
    import yaml

    from marl.sweep import create_sweep, plan_trials, record_trial, run_trial, write_summary

    config = tmp_path / "lazy.yaml"
    config.write_text(yaml.safe_dump({**LAZY, "train": {**LAZY["train"], "total_env_steps": 400}}))
    out = create_sweep(tmp_path / "sweep", plan_trials([str(config)], [0, 1], ["algo.advantage=coma,gae"]))
    for trial in plan_trials([str(config)], [0, 1], ["algo.advantage=coma,gae"]):
        record = run_trial(trial, out / trial.name)
        assert record["status"] == "done", record
        record_trial(out, record)
    write_summary(out, reps=200)
    monkeypatch.setenv("MARL_SWEEP", str(out))
    nb = nbformat.read(Path("notebooks/sweep_comparison.ipynb"), as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "| algo.advantage=coma | 2 |" in text and "| algo.advantage=gae |" in text
    assert "lazy-algo.advantage_gae-s1 | done" in text
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) >= 1
