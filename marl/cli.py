"""``marl`` command line: train, eval, credit, compare, sweep, list."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def _cmd_train(args) -> int:
    from marl.config import load_config
    from marl.evaluate import SIMULATORS
    from marl.run import default_run_dir, final_evaluation, new_run, resume_run
    from marl.trainer import TrainingInterrupted

    from marl.checkpoint import RunDirError
    from marl.envs import EnvError

    if args.resume:
        if args.config:
            raise _UsageError("give either CONFIG or --resume RUN_DIR, not both")
        trainer = resume_run(args.resume, args.set, trust_env_state=args.trust_env_state)
    else:
        if not args.config:
            raise _UsageError("marl train needs a CONFIG file (or --resume RUN_DIR)")
        if args.trust_env_state:
            raise _UsageError("--trust-env-state goes with --resume RUN_DIR")
        cfg = load_config(args.config, args.set)
        trainer = new_run(cfg, args.run_dir or default_run_dir(args.config))
    resume = f"{command('marl')} train --resume {trainer.run_dir}"
    try:
        print(f"run directory: {trainer.run_dir}", file=sys.stderr)
        if trainer.envs.batched:   # a twin's periodic and final evaluations differ: say so
            print(trainer.envs.simulators, file=sys.stderr)
        try:
            summary = trainer.train()
        except TrainingInterrupted as exc:
            trainer.ignore_stop_signals_until_exit()
            print(f"\n{exc}. Continue with: {resume}", file=sys.stderr)
            return 130
        except (EnvError, RunDirError) as exc:   # a dead env worker, a full disk: say what is kept
            kept = ("no checkpoint was written yet" if trainer.saved_iteration is None else
                    f"the checkpoint of iteration {trainer.saved_iteration} is kept")
            raise type(exc)(f"{exc}; {kept}: continue with {resume}") from None
        result = final_evaluation(trainer)
    finally:
        trainer.close()
    line = (f"done: {summary['env_steps']} env steps in {summary['wall_s']:.1f} s "
            f"({summary['env_steps_per_s']:.0f} env steps/s), last team return "
            f"{_fmt(summary['team_return'])}")
    if result is not None:
        sampled = result["sampled"]
        line += (f", eval greedy {result['team_return_mean']:.2f} ± {result['team_return_std']:.2f}, sampled "
                 f"{sampled['team_return_mean']:.2f} ± {sampled['team_return_std']:.2f} "
                 f"(on {SIMULATORS[result['simulator']]})")
    print(line + f", run directory {trainer.run_dir}")
    if result is not None and "note" in result:
        print(f"note: {result['note']}")
    print(f"TensorBoard: {command('tensorboard')} --logdir {trainer.run_dir}")
    return 0


def command(name: str) -> str:
    """How to call the console script ``name`` of this Python's environment from the current
    directory, as printed for the user: the bare name when the shell finds this environment's copy
    (the venv is active, or it is on PATH), else its path (``.venv/bin/marl`` from the project
    root), else ``python -m`` its module."""
    import shutil

    bin_dir = Path(sys.executable).parent   # not resolved: a venv's python is a link out of the venv
    script = bin_dir / name
    found = shutil.which(name)
    if found and script.exists() and Path(found).resolve() == script.resolve():
        return name
    if script.exists():
        rel = os.path.relpath(script)
        return rel if not rel.startswith("..") else str(script)
    module = {"marl": "marl.cli", "tensorboard": "tensorboard.main"}[name]
    return f"{sys.executable} -m {module}"


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.2f}"


def _cmd_eval(args) -> int:
    from marl.env_backend import EnvBackend
    from marl.evaluate import evaluate_batched, evaluate_both, render_gif
    from marl.run import load_actor

    actor, cfg = load_actor(args.run_dir)
    # The real env by default, whatever the run trained on; --batched: the batched twin (fast).
    run = EnvBackend(cfg).evaluator("final", batched=args.batched)
    result = evaluate_both(run, actor, cfg.env.id, cfg.env.kwargs, args.episodes, seed=args.seed)
    out = _write_new(Path(args.out) if args.out else None, Path(args.run_dir), json.dumps(result, indent=2) + "\n")
    if args.gif:
        render_gif(actor, cfg.env.id, cfg.env.kwargs, args.gif, seed=args.seed)
    if args.json:
        print(json.dumps(result))
        return 0
    for label, res in [("greedy", result), ("sampled", result["sampled"])]:
        where = " (batched env)" if run is evaluate_batched else ""
        print(f"team return {res['team_return_mean']:.2f} ± {res['team_return_std']:.2f} over {res['episodes']} "
              f"{label} episodes{where}")
        for key, value in res.items():
            if key.startswith("return/"):
                print(f"  {key[len('return/'):]}: {value:.2f}")
    if "note" in result:
        print(f"note: {result['note']}")
    if args.gif:
        print(f"gif: {args.gif}")
    print(f"wrote {out}")
    return 0


def _write_new(out: Path | None, run_dir: Path, text: str) -> Path:
    """Write ``text`` to ``out``, or to a new ``eval_<time>[-k].json`` in ``run_dir``; never over an
    existing file (the training's ``eval.json`` included)."""
    from marl.run import EVAL_NAME

    if out is not None:
        candidates = [out]
    else:
        stem = run_dir / f"{Path(EVAL_NAME).stem}_{time.strftime('%Y%m%d-%H%M%S')}"
        candidates = [Path(f"{stem}.json")] + [Path(f"{stem}-{k}.json") for k in range(1, 100)]
    for path in candidates:
        try:
            with open(path, "x") as f:
                f.write(text)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise _UsageError(f"cannot write {path} ({exc.strerror})") from None
    raise _UsageError(f"{candidates[-1]} already exists; pick another --out")


def _cmd_credit(args) -> int:
    from marl.credit import credit_fidelity
    from marl.learners import credit_method
    from marl.run import load_trainer

    if args.attribution and args.oracle:
        raise _UsageError("--attribution and --oracle are separate views (attribution reads the networks, the oracle "
                          "re-simulates the env); run them one at a time")
    if not args.attribution and (args.ig_steps is not None or args.baseline is not None):
        raise _UsageError("--ig-steps and --baseline need --attribution ig")
    if args.oracle:
        if args.behaviour is not None:
            raise _UsageError("--oracle scores on-policy episodes (the policy the oracle rolls out); drop --behaviour")
    elif any(v is not None for v in (args.rollouts, args.states, args.horizon)) or args.no_twin:
        raise _UsageError("--rollouts, --states, --horizon and --no-twin need --oracle")
    trainer = load_trainer(args.run_dir)
    try:
        if args.attribution:
            from marl.attribution import attribution_fidelity
            score = attribution_fidelity(trainer, args.episodes, seed=args.seed, behaviour=args.behaviour,
                                         baseline=args.baseline or "mean", n_steps=args.ig_steps or 128)
        elif args.oracle:
            from marl.oracle import oracle_fidelity
            score = oracle_fidelity(trainer, args.episodes, args.states or 64, args.rollouts or 8, args.horizon,
                                    seed=args.seed, twin=False if args.no_twin else None)
        else:
            score = credit_fidelity(trainer, args.episodes, seed=args.seed, behaviour=args.behaviour or "uniform")
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    finally:
        trainer.close()
    if args.json:
        print(json.dumps(score))
        return 0
    if args.oracle:
        _print_oracle(score, trainer.agents)
        return 0
    if args.attribution:
        _print_attribution(score, trainer.agents)
        return 0
    print(f"credit fidelity of {credit_method(trainer.cfg)} on {trainer.cfg.env.id} over {score['episodes']} "
          f"episodes ({score['behaviour']} actions)")
    print(f"  rank correlation with the true marginal contribution: overall {score['overall']:.3f}, "
          f"per step {score['per_step']:.3f}")
    print(f"  {'agent':12s} {'mean|A|':>9s} {'share':>7s} {'true mean|c|':>13s}")
    for agent in trainer.agents:
        print(f"  {agent:12s} {score['abs_adv/' + agent]:9.4f} {score['share/' + agent]:7.3f} "
              f"{score['true_abs/' + agent]:13.4f}")
    return 0


def _print_attribution(score: dict, agents: list[str]) -> None:
    truth = "true_abs/" + agents[0] in score
    print(f"integrated gradients (captum) on {score['env']}: {score['steps']} steps of {score['episodes']} episodes "
          f"({score['behaviour']} actions), {score['baseline']} baseline, {score['n_steps']} path steps")
    views = []
    for view, label in (("value", "V"), ("actor", "logit")):
        if f"{view}/skipped" in score:
            print(f"  {view} view skipped: {score[view + '/skipped']}")
            continue
        views.append((view, label))
        line = f"  {view}: {score[view + '/output']}"
        if view == "value":
            line += (f"; agent groups: {score['value/grouping']} (unobserved features hold "
                     f"{score['value/unobserved_fraction']:.1%})")
        print(line + f"; completeness |delta| max {score[view + '/delta_max']:.2g}, mean "
                     f"{score[view + '/delta_mean_abs']:.2g}, against mean |f(x) - f(baseline)| "
                     f"{score[view + '/gap_mean_abs']:.3g}")
    head = f"  {'agent':12s}"
    for _, label in views:
        head += f" {label + ' mean|a|':>14s} {label + ' share':>12s}"
    if any(view == "actor" for view, _ in views):
        head += f" {'obs part':>9s}"
    if truth:
        head += f" {'true mean|c|':>13s} {'true share':>11s}"
    print(head)
    for agent in agents:
        row = f"  {agent:12s}"
        for view, _ in views:
            row += f" {score[f'{view}/abs/{agent}']:14.4g} {score[f'{view}/share/{agent}']:12.3f}"
        if any(view == "actor" for view, _ in views):
            row += f" {score['actor/obs_fraction/' + agent]:9.2f}"
        if truth:
            row += f" {score['true_abs/' + agent]:13.4f} {score['true_share/' + agent]:11.3f}"
        print(row)
    if truth:
        print("  rank correlation of the signed attribution with the true marginal contribution: "
              + ", ".join(f"{label} {_fmt(score[view + '/spearman'])}" for view, label in views))
    print("  an attribution says which inputs move the network's output, not what caused the reward "
          "(docs/credit.md, Attribution views)")


def _print_oracle(score: dict, agents: list[str]) -> None:
    horizon = "the episode's end" if score["horizon"] is None else f"{score['horizon']} steps"
    print(f"oracle credit of {score['method']} on {score['env']}: {score['states']} states of {score['episodes']} "
          f"on-policy episodes, K={score['rollouts']} rollouts per (agent, action) to {horizon}, "
          f"learner reward ({score['reward']}), gamma {score['gamma']}")
    print(f"  A* = Q_i(s,u) - sum_u' pi_i(u'|o_i) Q_i(s,(u_-i,u')); sign agreement counts |A*| > "
          f"max({score['sign_atol']:g}, {score['sign_z']:g} SE)")
    print(f"  overall: spearman {_fmt(score['spearman'])}, sign agreement {_fmt(score['sign_agreement'])} "
          f"({score['sign_entries']} of {score['entries']} entries); the oracle's own split-half rank "
          f"reliability {_fmt(score['oracle_reliability'])}")
    print(f"  {'agent':12s} {'spearman':>9s} {'sign':>6s} {'entries':>8s} {'mean|A|':>9s} {'mean|A*|':>9s} "
          f"{'SE(A*)':>8s}")
    for agent in agents:
        print(f"  {agent:12s} {_fmt(score['spearman/' + agent]):>9s} {_fmt(score['sign_agreement/' + agent]):>6s} "
              f"{score['entries/' + agent]:8d} {score['abs_adv/' + agent]:9.4g} {score['abs_oracle/' + agent]:9.4g} "
              f"{score['oracle_se/' + agent]:8.3g}")
    note = f" ({score['backend_note']})" if score["backend_note"] else ""
    print(f"  cost: {score['env_steps']:,} env steps ({score['simulated_steps']:,} simulated) on the "
          f"{score['backend']} backend{note}, {score['oracle_seconds']:.1f} s (total {score['seconds']:.1f} s, "
          f"{score['episode_steps']:,} episode steps)")


def _cmd_sweep(args) -> int:
    from marl.sweep import create_sweep, plan_trials, run_sweep

    if args.resume:
        if args.configs or args.seeds or args.set or args.out:
            raise _UsageError("--resume DIR continues the sweep planned there; give no CONFIG, --seeds, --set or --out")
        out = Path(args.resume)
        from marl.sweep import load_plan
        load_plan(out)   # a one-line error if it is not a sweep
    else:
        if not args.configs or not args.seeds or not args.out:
            raise _UsageError("marl sweep needs CONFIG..., --seeds S... and --out DIR (or --resume DIR)")
        out = create_sweep(args.out, plan_trials(args.configs, args.seeds, args.set))
    hint = f"{command('marl')} sweep --resume {out}" + (f" --jobs {args.jobs}" if args.jobs else "") + \
        (f" --address {args.address}" if args.address else "")
    try:
        summary = run_sweep(out, args.jobs, args.address, print_fn=lambda line: print(line, file=sys.stderr))
    except KeyboardInterrupt:
        print(f"\nmarl sweep: interrupted; finished trials are kept: continue with {hint}", file=sys.stderr)
        return 130
    print((out / "summary.md").read_text())
    failed = [e for e in summary["trials"] if e["status"] == "failed"]
    print(f"wrote {out / 'summary.md'}, {out / 'summary.json'}" +
          (f" and {out / 'compare.png'}" if summary["groups"] else ""))
    if summary["interrupted"]:
        print(f"marl sweep: stopped before every trial ended; continue with {hint}", file=sys.stderr)
        return 130
    if failed:
        print(f"marl sweep: {len(failed)} of {len(summary['trials'])} trials failed: " +
              "; ".join(f"{e['trial']}: {e['error']}" for e in failed), file=sys.stderr)
        return 1
    return 0


def _cmd_list(args) -> int:
    from marl.algorithms import ADVANTAGES
    from marl.envs import ENVS, REWARD_MODES
    from marl.envs.registry import PREFIXES
    from marl.envs.rewards import DIFFERENCE_COUNTERFACTUALS, POTENTIALS

    print("environments (env.id):")
    for name, target in ENVS.items():
        print(f"  {name:34s} {target}")
    for prefix, target in PREFIXES.items():
        print(f"  {prefix + ':<id>':34s} {target} (any id the package registers)")
    print("  any 'package.module:factory' returning a PettingZoo ParallelEnv or AECEnv")
    print("advantage modules (algo.advantage):")
    for name, spec in ADVANTAGES.items():
        print(f"  {name:12s} critic={spec.critic.name}  {spec.description}")
    print(f"reward modes (env.reward): {', '.join(REWARD_MODES)}")
    print(f"difference counterfactuals (env.difference): {', '.join(DIFFERENCE_COUNTERFACTUALS)}")
    print(f"shaping potentials (env.shaping): {', '.join(POTENTIALS)}, or 'package.module:function'")
    return 0


def _cmd_compare(args) -> int:
    from marl.compare import run_from_args
    return run_from_args(args)


class _UsageError(ValueError):
    pass


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marl", description="Credit assignment for cooperative MARL")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train from a YAML config, or resume a run")
    p.add_argument("config", nargs="?", help="YAML config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set algo.lr=3e-4 (repeatable)")
    p.add_argument("--run-dir", help="where to write the run (default runs/<config>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--trust-env-state", action="store_true",
                   help="--resume: restore the checkpoint's env state (a pickle, so code) even though this user's "
                        "key did not sign it, e.g. a run copied from another machine you trust")
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("eval", help="greedy and sampled (stochastic) evaluation of a run's checkpoint, side by side")
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=_positive, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--gif", metavar="PATH", help="render one greedy episode to a GIF")
    p.add_argument("--batched", action="store_true",
                   help="evaluate on the env's batched twin (fast) instead of the PettingZoo env")
    p.add_argument("--out", metavar="PATH", help="where to write the result (default: a new eval_<time>.json in "
                                                  "RUN_DIR, beside the training's eval.json); never overwritten")
    p.set_defaults(func=_cmd_eval)
    p = sub.add_parser("credit", help="score a run's credit against a diagnostic env's true credit, or (--oracle) "
                                      "against Monte-Carlo counterfactual advantages on any copyable env, or "
                                      "(--attribution ig) attribute the critic's value and the actors' choices to "
                                      "each agent's inputs")
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=_positive, default=32, help="episodes played (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--behaviour", choices=["uniform", "policy"], default=None,
                   help="act uniformly at random (default; --attribution: on envs with true credit, else the "
                        "policy) or with the trained policy")
    p.add_argument("--oracle", action="store_true",
                   help="score against A*_i = Q_i(s,u) - E_pi Q_i(s,(u_-i,u')) estimated by rollouts from copies of "
                        "the env (docs/credit.md)")
    p.add_argument("--rollouts", type=_positive, default=None, metavar="K",
                   help="--oracle: rollouts per (state, agent, action) (default 8)")
    p.add_argument("--states", type=_positive, default=None, help="--oracle: steps sampled (default 64)")
    p.add_argument("--horizon", type=_positive, default=None, metavar="H",
                   help="--oracle: steps per rollout (default: to the episode's end)")
    p.add_argument("--no-twin", action="store_true",
                   help="--oracle: copy PettingZoo envs even where a batched twin exists")
    p.add_argument("--attribution", choices=["ig"], default=None,
                   help="integrated gradients (captum) of the central critic's V(s) and of each agent's chosen-action "
                        "logit, grouped by agent (docs/credit.md)")
    p.add_argument("--ig-steps", type=_positive, default=None, metavar="K",
                   help="--attribution: points on the integration path (default 128; the completeness delta "
                        "falls about as 1/K)")
    p.add_argument("--baseline", choices=["mean", "zeros"], default=None,
                   help="--attribution: the reference input, the mean over the episodes' steps (default) or zeros")
    p.set_defaults(func=_cmd_credit)
    from marl.compare import add_arguments as add_compare_arguments   # a light import (numpy only)
    p = sub.add_parser("compare", help="compare run directories grouped by config: return curves against env "
                                       "steps and wall time with confidence bands, credit shares, an IQM table")
    add_compare_arguments(p)
    p.set_defaults(func=_cmd_compare)
    p = sub.add_parser("sweep", help="train configs x seeds x --set grids as Ray Tune trials (locally, one per core, "
                                     "or on a Ray cluster), each a run directory under --out, with an IQM summary")
    p.add_argument("configs", nargs="*", metavar="CONFIG",
                   help="YAML configs; 'path.yaml@key=v,key=v' is a variant of one with its own overrides")
    p.add_argument("--seeds", type=int, nargs="+", metavar="S", help="seeds, each config runs once per seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                   help="override a key for every trial; several values make a grid (repeatable: the product)")
    p.add_argument("--out", metavar="DIR", help="a new (or empty) directory for the trials' run directories and "
                                                  "the summary")
    p.add_argument("--jobs", type=_positive, metavar="K", help="trials at a time (default: one per core, or as "
                                                                "many as the cluster has CPUs)")
    p.add_argument("--address", default="", help="a Ray cluster to run the trials on ('auto' or host:port; token "
                                                  "auth as for rllib.address, docs/rllib.md); --out must be on a "
                                                  "file system all its nodes share")
    p.add_argument("--resume", metavar="DIR", help="continue a stopped sweep: finished trials are kept, stopped "
                                                    "ones continue from their checkpoints")
    p.set_defaults(func=_cmd_sweep)
    p = sub.add_parser("list", help="registered envs, advantage modules and reward modes")
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    from marl.envs import EnvError
    from marl.checkpoint import RunDirError
    from marl.compare import CompareError
    from marl.config import ConfigError
    from marl.learner import TrainingDiverged
    from marl.sweep import SweepError

    # Like `python -m`, let env ids name modules in the current directory (e.g. tests.my_env:make).
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CompareError, ConfigError, EnvError, RunDirError, SweepError, _UsageError) as exc:
        print(f"marl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # outside training (which saves and says so): nothing to save
        print(f"\nmarl {args.command}: interrupted", file=sys.stderr)
        return 130
    except TrainingDiverged as exc:
        print(f"marl {args.command}: training diverged: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
