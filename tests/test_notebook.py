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
