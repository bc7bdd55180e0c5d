"""Train the same configs at one seed with two commits' code and diff their metrics bit for bit.

    python benchmarks/diff_metrics.py 748ec9e                     # that commit against HEAD
    python benchmarks/diff_metrics.py 748ec9e . --only quickstart recurrent --steps 2000
    python benchmarks/diff_metrics.py HEAD . --config configs/spread_ippo.yaml --set algo.lr=1e-3

Each commit is checked out with ``git worktree add --detach`` into a temporary folder (``.`` is this
working tree as it stands, uncommitted changes included) and every case trains there with that
tree's own code (``PYTHONPATH``), in a fresh process, for a small budget. Then each
``metrics.jsonl`` row and ``eval.json`` are compared value for value; wall-clock keys (``perf/*``)
are ignored. One line per case says how many values are identical, and the first and the largest
differences where any are not. Exit status 1 when any case differs or fails.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (config relative to the tree, overrides, default env steps: a few updates each)
CASES = {
    "quickstart": ("configs/quickstart.yaml", [], 2000),
    "spread_mappo": ("configs/spread_mappo.yaml", [], 4000),
    "spread_coma": ("configs/spread_coma.yaml", [], 2000),
    "recurrent": ("configs/spread_mappo.yaml", ["model.recurrent=true"], 4000),
    "lbf_fast": ("configs/lbf_fast.yaml", [], 8000),
    "spread_fast": ("configs/spread_fast.yaml", [], 19200),
    "workers": ("configs/spread_mappo.yaml", ["env.workers=2"], 4000),
    "spread_qmix": ("configs/spread_qmix.yaml", [], 4000),
    "spread_fast_qmix": ("configs/spread_fast_qmix.yaml", [], 19200),
}
IGNORED_PREFIXES = ("perf/",)


@contextmanager
def checkout(rev: str):
    """A tree holding ``rev``'s code: this working tree for ``.``, else a temporary worktree."""
    if rev == ".":
        yield ROOT
        return
    with tempfile.TemporaryDirectory(prefix="diff_metrics_") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(path), rev], check=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


def train(tree: Path, config: str, overrides: list[str], run_dir: Path) -> str | None:
    """Train ``config`` with ``tree``'s code into ``run_dir``; the error's last line, or None."""
    if not (tree / config).exists():
        return f"{config} does not exist in this commit"
    sets = [arg for o in ["train.progress=false", *overrides] for arg in ("--set", o)]
    proc = subprocess.run([sys.executable, "-m", "marl.cli", "train", str(tree / config), "--run-dir", str(run_dir),
                           *sets], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return None


def flatten(record: dict, prefix: str = "") -> dict:
    """Nested dicts (``eval.json``'s ``sampled``) as ``a/b`` keys; ignored keys dropped."""
    out = {}
    for key, value in record.items():
        name = prefix + key
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif not name.startswith(IGNORED_PREFIXES):
            out[name] = value
    return out


def records(run_dir: Path) -> list[tuple[str, dict]]:
    """``(where, values)`` per metrics row (``iteration N``) and for ``eval.json``."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out = [(f"iteration {row.get('iteration', i + 1)}", flatten(row)) for i, row in enumerate(rows)]
    if (run_dir / "eval.json").exists():
        out.append(("eval.json", flatten(json.loads((run_dir / "eval.json").read_text()))))
    return out


def same(a, b) -> bool:
    """Equal to the bit: floats by their exact value (NaN equals NaN), anything else by ``==``."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b and type(a) is type(b)


def compare(old: list[tuple[str, dict]], new: list[tuple[str, dict]]) -> str:
    """One line: how many values agree, and where they first and most differ."""
    if [w for w, _ in old] != [w for w, _ in new]:
        return f"DIFFERENT rows: {len(old)} before, {len(new)} after"
    total, diffs, extra = 0, [], set()
    for (where, a), (_, b) in zip(old, new):
        extra |= set(a) ^ set(b)
        for key in sorted(set(a) & set(b)):
            total += 1
            if not same(a[key], b[key]):
                x, y = a[key], b[key]
                rel = abs(x - y) / max(abs(x), abs(y), 1e-300) if all(isinstance(v, (int, float)) for v in (x, y)) \
                    else math.inf
                diffs.append((where, key, x, y, rel))
    line = f"{total - len(diffs)} of {total} values identical"
    if extra:
        line += f"; keys on one side only: {', '.join(sorted(extra)[:6])}" + (" ..." if len(extra) > 6 else "")
    if diffs:
        first, worst = diffs[0], max(diffs, key=lambda d: d[4])
        line = (f"DIFFERENT: {line}; first at {first[0]} {first[1]}: {first[2]!r} -> {first[3]!r}; largest "
                f"relative difference {worst[4]:.2e} at {worst[0]} {worst[1]}")
    elif not extra:
        line = f"identical: {line}"
    return line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", help="a commit (or '.', this working tree)")
    p.add_argument("after", nargs="?", default="HEAD", help="a commit, or '.' for this working tree (default HEAD)")
    p.add_argument("--only", nargs="*", choices=sorted(CASES), help="these cases (default: all)")
    p.add_argument("--config", help="train this config (relative to each tree) instead of the cases")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every case")
    p.add_argument("--steps", type=int, help="train.total_env_steps for every case (default: each case's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", type=Path, help="keep the run directories under this folder")
    args = p.parse_args(argv)
    cases = {Path(args.config).stem: (args.config, [], 4000)} if args.config else \
        {name: CASES[name] for name in (args.only or CASES)}
    failed = False
    with ExitStack() as stack:
        trees = [stack.enter_context(checkout(rev)) for rev in (args.before, args.after)]
        out = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="diff_metrics_runs_")))
        for name, (config, overrides, steps) in cases.items():
            sets = [*overrides, f"seed={args.seed}", f"train.total_env_steps={args.steps or steps}", *args.set]
            runs = [out / f"{name}_{side}" for side in ("before", "after")]
            errors = [train(tree, config, sets, run) for tree, run in zip(trees, runs)]
            if any(errors):
                line = "FAILED: " + "; ".join(f"{side}: {e}" for side, e in zip(("before", "after"), errors) if e)
            else:
                line = compare(records(runs[0]), records(runs[1]))
            failed |= not line.startswith("identical")
            print(f"{name} ({config}{''.join(' --set ' + s for s in sets)}): {line}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
