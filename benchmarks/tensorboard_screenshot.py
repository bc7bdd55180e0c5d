"""The README's TensorBoard picture: trains a config, serves the run with a real ``tensorboard`` and
takes a headless-Chromium screenshot of the Custom Scalars tab (as tests/test_tensorboard.py does).

    python benchmarks/tensorboard_screenshot.py --out /tmp/tb_shot --png docs/tensorboard_agents.png

Writes the run to ``--out DIR/<config stem>`` and the 1500×1100 screenshot to ``DIR/tensorboard.png``
(copied to ``--png`` if given), and prints the run's last logged credit shares (``credit/share`` and
``credit_fidelity/share`` per agent), the figures the caption quotes. Needs ``chromium``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_shoot(run: Path, shot: Path, browser: str) -> None:
    """Serve ``run`` with TensorBoard until every agent's tags load, then screenshot Custom Scalars."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(run), "--host", "127.0.0.1",
                             "--port", str(port), "--load_fast=false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=10) as r:
                    tags = json.loads(r.read())
                if all("credit/share" in tags.get(f"agent_{i}", {}) for i in range(3)):
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit("tensorboard did not serve the run in time")
            time.sleep(0.5)
        subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={shot.parent / 'chromium-profile'}",
                        "--window-size=1500,1100", "--virtual-time-budget=25000", f"--screenshot={shot}",
                        f"http://127.0.0.1:{port}/#custom_scalars"], check=True, capture_output=True, timeout=240)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/diag_lazy_agent_coma.yaml")
    parser.add_argument("--out", required=True, help="a new directory for the run and the screenshot")
    parser.add_argument("--png", help="also copy the screenshot here (e.g. docs/tensorboard_agents.png)")
    args = parser.parse_args(argv)

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    out = Path(args.out).resolve()
    if out.exists():
        parser.error(f"--out {out} exists; give a new directory")
    out.mkdir(parents=True)
    run = out / Path(args.config).stem
    subprocess.run([sys.executable, "-m", "marl.cli", "train", args.config, "--set", "train.progress=false",
                    "--run-dir", str(run)], cwd=ROOT, check=True)
    shot = out / "tensorboard.png"
    serve_and_shoot(run, shot, browser)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    for family in ("credit/share", "credit_fidelity/share"):
        last = [r for r in records if f"{family}/agent_0" in r][-1]
        print(f"{family} at {last['env_steps']} env steps: " +
              ", ".join(f"agent_{i} {last[f'{family}/agent_{i}']:.3f}" for i in range(3)))
    print(f"screenshot: {shot}")
    if args.png:
        shutil.copyfile(shot, args.png)
        print(f"copied to {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
