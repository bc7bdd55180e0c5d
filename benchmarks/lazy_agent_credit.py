"""Lazy-agent credit at the common settings: does each method give agent_2 the lowest share?

    nice -n 5 python benchmarks/lazy_agent_credit.py --seeds 21 22 23 24 25 --md /tmp/lazy.md
    python benchmarks/lazy_agent_credit.py --ceiling

Each method trains from its ``configs/diag_lazy_agent*.yaml`` as shipped (the base config's
gamma 0.99, lam 0.8 and default normalisation; the variants switch only the method), then is scored
by ``marl.credit.credit_fidelity`` (uniformly random episodes; Spearman correlation of advantages
with ``true_credit``; each agent's share of mean |A|). Prints, per method: on how many seeds
agent_2 (whose effort the team reward ignores) has the strictly lowest share, the mean fidelity
with a 95% bootstrap CI over seeds (rliable), and whether it meets issue 26's bar (lowest share on
every seed, mean fidelity >= 0.6, CI disjoint from shared-reward GAE's).

``--ceiling`` prints what an *exact* critic would score under a deterministic top-effort policy,
for several (gamma, lam): a lambda-return advantage of step t also sums the later steps'
deviations from the policy, which under uniform scoring episodes are large and which the per-step
true credit does not contain.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script from anywhere
from benchmarks.credit_fidelity import _plain, _run, lowest_agent  # noqa: E402

METHODS = {
    "GAE, central V, shared": "configs/diag_lazy_agent.yaml",
    "difference rewards (re-simulated), GAE": "configs/diag_lazy_agent_difference.yaml",
    "Shapley-λ, M=8": "configs/diag_lazy_agent_shapley_lambda.yaml",
    "DOP-λ": "configs/diag_lazy_agent_dop_lambda.yaml",
    "COMA-λ": "configs/diag_lazy_agent_coma_lambda.yaml",
    "COMA": "configs/diag_lazy_agent_coma.yaml",
    "Shapley, M=8": "configs/diag_lazy_agent_shapley.yaml",
    "DOP": "configs/diag_lazy_agent_dop.yaml",
}
BASELINE = "GAE, central V, shared"
LAZY_AGENT = "agent_2"
FIDELITY_BAR = 0.6
TUNING_SEEDS = [0, 1, 2]
DEFAULT_SEEDS = [21, 22, 23, 24, 25]
CEILING_SETTINGS = [(0.99, 0.95), (0.99, 0.8), (0.95, 0.8), (0.99, 0.0)]


def exact_critic_ceiling(gamma: float, lam: float, episodes: int = 2000, length: int = 10, seed: int = 0) -> dict:
    """Fidelity and agent shares of the advantages an exact critic gives on ``diag:lazy_agent``
    (3 agents, 3 effort levels, agent_2 lazy) under the deterministic top-effort policy, scored on
    ``episodes`` uniformly random episodes ``[E, T, N]`` as ``credit_fidelity`` does.

    - difference rewards + GAE: ``A_t = sum_k (gamma lam)^k (D_{t+k} - 1)``, D_i = w_i e_i / 2;
    - COMA-/Shapley-/DOP-lambda (equal here: the reward is additive): the agent's own
      counterfactual ``w_i (e_i - 2) / 2`` plus the shared tail ``sum_{k>=1} (gamma lam)^k (r_{t+k} - 2)``.
    """
    import numpy as np

    from marl.credit import spearman

    rng = np.random.default_rng(seed)
    effort = rng.integers(0, 3, (episodes, length, 3)).astype(float)
    w = np.array([1.0, 1.0, 0.0])
    true = w * (effort - 1) / 2
    dev_d = w * effort / 2 - w                       # D_i minus its value under the policy
    dev_r = (w * effort).sum(-1) / 2 - 2.0           # team reward minus its value under the policy
    gl = gamma * lam
    a_diff, tail = np.zeros_like(dev_d), np.zeros(dev_r.shape)
    for t in range(length):
        weights = gl ** np.arange(length - t)
        a_diff[:, t] = np.einsum("k,ekn->en", weights, dev_d[:, t:])
        tail[:, t] = np.einsum("k,ek->e", weights[1:], dev_r[:, t + 1:])
    out = {}
    for name, adv in (("difference", a_diff), ("lambda_forms", dev_d + tail[..., None])):
        abs_adv = np.abs(adv).mean((0, 1))
        out[name] = {"fidelity": spearman(adv, true), "shares": (abs_adv / abs_adv.sum()).tolist()}
    return out


def summarise(results: list[dict], reps: int) -> list[dict]:
    """Per method: agent_2-lowest count, mean fidelity with a 95% CI, shares, and the bar."""
    import numpy as np

    from marl.compare import bootstrap_interval

    rows = []
    for method in METHODS:
        rs = sorted((r for r in results if r["method"] == method), key=lambda r: r["seed"])
        if not rs:
            continue
        agents = rs[0]["agents"]
        fid = [r["score"]["overall"] for r in rs]
        point, low, high, _ = bootstrap_interval(fid, "mean", reps)
        shares = np.array([[r["score"][f"share/{a}"] for a in agents] for r in rs])
        lowest = [lowest_agent(r["score"], agents) for r in rs]
        rows.append({"method": method, "config": METHODS[method], "seeds": [r["seed"] for r in rs],
                     "fidelity": {"mean": float(point[0]), "ci": [float(low[0]), float(high[0])], "per_seed": fid},
                     "per_step": [r["score"]["per_step"] for r in rs],
                     "share_mean": dict(zip(agents, shares.mean(0).tolist())),
                     "lowest_per_seed": lowest, "lazy_lowest": sum(a == LAZY_AGENT for a in lowest),
                     "eval_return": [r["eval_return"] for r in rs]})
    base = next((row for row in rows if row["method"] == BASELINE), None)
    for row in rows:
        if row is base:
            continue
        disjoint = base is not None and (row["fidelity"]["ci"][0] > base["fidelity"]["ci"][1]
                                         or row["fidelity"]["ci"][1] < base["fidelity"]["ci"][0])
        row["bar"] = {"lowest_every_seed": row["lazy_lowest"] == len(row["seeds"]),
                      "mean_fidelity": row["fidelity"]["mean"] >= FIDELITY_BAR, "ci_disjoint_from_gae": disjoint}
        row["bar"]["met"] = all(row["bar"].values())
    return rows


def table_markdown(rows: list[dict]) -> str:
    def num(x):
        return "n/a" if x is None or x != x else f"{x:.2f}"

    lines = [f"| method | {LAZY_AGENT} lowest share | fidelity: mean [95% CI] | fidelity per seed | "
             f"mean share agent_0 / agent_1 / agent_2 | per-step fidelity (mean) | bar met |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        f = row["fidelity"]
        shares = " / ".join(num(v) for v in row["share_mean"].values())
        per_step = sum(row["per_step"]) / len(row["per_step"])
        if "bar" not in row:
            bar = "(baseline)"
        else:
            missed = [k for k, ok in row["bar"].items() if k != "met" and not ok]
            bar = "yes" if row["bar"]["met"] else "no: " + ", ".join(missed).replace("_", " ")
        lines.append(f"| {row['method']} | {row['lazy_lowest']}/{len(row['seeds'])} | {num(f['mean'])} "
                     f"[{num(f['ci'][0])}, {num(f['ci'][1])}] | {', '.join(num(x) for x in f['per_seed'])} | "
                     f"{shares} | {num(per_step)} | {bar} |")
    return "\n".join(lines)


def ceiling_markdown() -> str:
    lines = ["| gamma | lam | exact critic, difference rewards + GAE: fidelity (agent_2 share) | "
             "exact critic, COMA-/Shapley-/DOP-λ: fidelity (agent_2 share) |", "|---|---|---|---|"]
    for gamma, lam in CEILING_SETTINGS:
        c = exact_critic_ceiling(gamma, lam)
        lines.append(f"| {gamma} | {lam} | {c['difference']['fidelity']:.2f} ({c['difference']['shares'][2]:.2f}) | "
                     f"{c['lambda_forms']['fidelity']:.2f} ({c['lambda_forms']['shares'][2]:.2f}) |")
    return "\n".join(lines)


def train_and_score(methods: list[str], seeds: list[int], steps: int, episodes: int, jobs: int) -> list[dict]:
    """Train each method's config on each seed (``jobs`` processes) and score its credit."""
    todo = [{"env": "lazy_agent", "method": method, "config": METHODS[method], "set": [], "seed": seed,
             "steps": steps, "episodes": episodes} for method in methods for seed in seeds]
    results = []
    with mp.get_context("spawn").Pool(jobs, maxtasksperchild=1) as pool:
        for r in pool.imap_unordered(_run, todo):
            results.append(r)
            print(f"  {r['method']} / seed {r['seed']}: fidelity {r['score']['overall']:.3f}, lowest "
                  f"{lowest_agent(r['score'], r['agents'])}", file=sys.stderr, flush=True)
    return results


def main(argv=None) -> None:
    from marl.compare import seed_report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS)
    parser.add_argument("--tuning-seeds", type=int, nargs="*", default=TUNING_SEEDS)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--episodes", type=int, default=32, help="episodes per fidelity score")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--bootstrap-reps", type=int, default=5_000)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), metavar="LABEL",
                        help=f"only these methods (default: all of {list(METHODS)})")
    parser.add_argument("--results", nargs="+", metavar="JSON",
                        help="train nothing: tabulate the per-seed results of earlier runs' --json files")
    parser.add_argument("--json", help="per-seed results (default: a new temporary folder)")
    parser.add_argument("--md", help="also write the markdown tables here")
    parser.add_argument("--ceiling", action="store_true", help="only print the exact-critic ceiling table")
    args = parser.parse_args(argv)
    if args.ceiling:
        print(ceiling_markdown())
        return

    if args.results:
        results = [r for path in args.results for r in json.loads(Path(path).read_text())["results"]]
        args.seeds = sorted({r["seed"] for r in results})
        args.steps, args.episodes = results[0]["steps"], results[0]["episodes"]
    else:
        results = train_and_score(args.methods or list(METHODS), args.seeds, args.steps, args.episodes, args.jobs)
    seeds = seed_report(args.seeds, args.tuning_seeds)
    rows = summarise(results, args.bootstrap_reps)
    md = (table_markdown(rows) + f"\n\n{len(args.seeds)} seeds, {args.steps:,} env steps each, {args.episodes} "
          f"uniformly random scoring episodes; CI: 95% bootstrap of the mean over seeds (rliable, "
          f"{args.bootstrap_reps:,} resamples). {seeds['seed_note']}\n\nThe same score for an exact critic "
          f"(`--ceiling`):\n\n" + ceiling_markdown())
    print(md)
    json_path = Path(args.json) if args.json else Path(tempfile.mkdtemp(prefix="marl-lazy-")) / "lazy_agent_credit.json"
    json_path.write_text(json.dumps(_plain({**seeds, "steps": args.steps, "episodes": args.episodes,
                                            "table": rows, "results": results}), indent=2, default=str))
    if args.md:
        Path(args.md).write_text(md + "\n")
    print(f"\nresults in {json_path}")


if __name__ == "__main__":
    main()
