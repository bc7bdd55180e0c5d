"""Run directories under faults, tried as a careful user and as an attacker would (issue 23): code in
a checkpoint, two writers, every stop signal, resume that cannot be honoured, a full disk, a corrupt
checkpoint, a dead env worker, a damaged metrics file, inspection commands over a run's records.

Each test asserts the one-line message, that nothing saved is lost, and, where resume is promised,
that the resumed run's metrics equal an uninterrupted run's. Tests that run several CLI processes
are marked slow (``.ci/run`` runs them)."""
import json
import os
import pickle
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from marl.checkpoint import (CHECKPOINT_NAME, KEY_ENV, CheckpointError, RunDirError, load_checkpoint,
                             save_checkpoint)
from marl.config import ConfigError, config_from_dict, load_config
from marl.envs import EnvWorkerLost
from marl.logger import METRICS_NAME, read_metrics
from marl.run import LOCK_NAME, load_actor, load_trainer, new_run, resume_run
from marl.trainer import Trainer, TrainingInterrupted
from tests.conftest import after_call_in_iteration, tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_key(tmp_path, monkeypatch):
    """A signing key of this test's own (the subprocesses inherit the variable)."""
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "key" / "marl-key"))
    return tmp_path / "key" / "marl-key"


def _cfg(**train):
    return tiny_config(train={"eval_episodes": 0, **train})


def _strip(records):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def _train(cfg_dict, run_dir):
    trainer = new_run(config_from_dict(cfg_dict), run_dir)
    try:
        trainer.train()
    finally:
        trainer.close()
    return read_metrics(run_dir)


def _full_and_cut(tmp_path, **train):
    """The metrics of an uninterrupted 800-step run (``tmp_path/full``), and a new trainer of the
    same config in ``tmp_path/cut`` for a test to interrupt."""
    cfg = _cfg(total_env_steps=800, **train)
    return _train(cfg, tmp_path / "full"), new_run(config_from_dict(cfg), tmp_path / "cut")


def _resume(run_dir, *overrides, **kwargs):
    trainer = resume_run(run_dir, list(overrides), **kwargs)
    try:
        trainer.train()
    finally:
        trainer.close()
    return read_metrics(run_dir)


def _cli(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "marl.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=kwargs.pop("cwd", ROOT), env=env, **kwargs)


def _popen(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "marl.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, start_new_session=True)


def _one_line(stderr: str, text: str) -> str:
    """The stderr of a refused command: exactly one line, holding ``text``."""
    lines = [line for line in stderr.splitlines()
             if line.strip() and not line.startswith(("[marl]", "run directory: "))]
    assert len(lines) == 1 and text in lines[0] and "Traceback" not in stderr, stderr
    return lines[0]


def _wait_rows(run, rows, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and len(read_metrics(run)) < rows:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)


def _write_cfg(tmp_path, cfg_dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg_dict))
    return path


# -- a checkpoint never runs code on load ------------------------------------------------------------

class _Payload:
    """Pickled, it makes a directory when unpickled: what an attacker's ``os.system`` would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_env_state_not_signed_by_this_user_is_never_unpickled(tmp_path, private_key, monkeypatch):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    _train(_cfg(total_env_steps=200, checkpoint_every=1), run)
    assert stat.S_IMODE(private_key.stat().st_mode) == 0o600
    state = load_checkpoint(run / CHECKPOINT_NAME)
    assert isinstance(state["env_state_hmac"], str) and state["settings"]["env.num_envs"] == "4"
    state["env_state"] = [torch.frombuffer(bytearray(pickle.dumps(_Payload(marker))), dtype=torch.uint8)]
    save_checkpoint(run / CHECKPOINT_NAME, state)   # the old signature no longer fits

    with pytest.raises(CheckpointError, match="not signed by this user's key.*--trust-env-state"):
        resume_run(run)
    load_actor(run)                 # marl eval
    load_trainer(run).close()       # marl credit
    proc = _cli("train", "--resume", str(run))
    assert proc.returncode == 2
    _one_line(proc.stderr, "--trust-env-state only if you trust where it came from")
    assert _cli("eval", str(run), "--episodes", "1").returncode == 0
    assert not marker.exists()
    assert not (run / LOCK_NAME).read_text()   # every refusal let the lock go
    with pytest.raises(CheckpointError):       # the payload returns no env: it is no checkpoint we can use
        resume_run(run, trust_env_state=True)
    assert marker.is_dir()                     # ... but it ran: the override is needed and meant


def test_a_run_from_another_users_key_resumes_only_when_trusted_and_then_exactly(tmp_path, monkeypatch):
    cfg = _cfg(total_env_steps=600, checkpoint_every=1)
    full = _train(cfg, tmp_path / "full")
    _train({**cfg, "train": {**cfg["train"], "total_env_steps": 300}}, tmp_path / "cut")
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "other-user" / "key"))   # the run was copied here
    with pytest.raises(CheckpointError, match="--trust-env-state"):
        resume_run(tmp_path / "cut", ["train.total_env_steps=600"])
    resumed = _resume(tmp_path / "cut", "train.total_env_steps=600", trust_env_state=True)
    assert _strip(resumed) == _strip(full)


# -- one writer per run directory -------------------------------------------------------------------

def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    trainer = new_run(config_from_dict(_cfg(total_env_steps=200)), run)
    try:
        assert f"pid {os.getpid()}" in (run / LOCK_NAME).read_text()
        with pytest.raises(RunDirError, match=f"in use by pid {os.getpid()} on host"):
            resume_run(run)
        with pytest.raises((RunDirError, ConfigError)):
            new_run(config_from_dict(_cfg(total_env_steps=200)), run)
        proc = _cli("train", "--resume", str(run))
        assert proc.returncode == 2
        _one_line(proc.stderr, f"is in use by pid {os.getpid()}")
        trainer.train()
    finally:
        trainer.close()
    assert len(read_metrics(run)) == 2 and load_checkpoint(run / CHECKPOINT_NAME)["iteration"] == 2


@pytest.mark.slow   # several CLI processes
def test_two_runs_started_together_on_one_directory_leave_one_clean_run(tmp_path):
    cfg, run = _write_cfg(tmp_path, _cfg(total_env_steps=400)), tmp_path / "runs" / "one"
    procs = [_popen("train", str(cfg), "--run-dir", str(run)) for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    _one_line(next(err for code, err in results if code == 2), "run directory")
    assert [r["iteration"] for r in read_metrics(run)] == [1, 2, 3, 4]
    assert _strip(read_metrics(run)) == _strip(_train(_cfg(total_env_steps=400), tmp_path / "alone"))


@pytest.mark.slow   # several CLI processes
def test_the_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    _train(_cfg(total_env_steps=200), run)
    holder = subprocess.run([sys.executable, "-c", "import os, signal, sys; from marl.run import RunLock; "
                             f"RunLock({str(run)!r}); os.kill(os.getpid(), signal.SIGKILL)"],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=120)
    assert holder.returncode == -signal.SIGKILL and "pid" in (run / LOCK_NAME).read_text()
    proc = _cli("train", "--resume", str(run), "--set", "train.total_env_steps=300")
    assert proc.returncode == 0, proc.stderr
    assert "taking over the lock" in proc.stderr and len(read_metrics(run)) == 3


# -- every stop is saved -----------------------------------------------------------------------------

@pytest.mark.parametrize("signum, workers", [pytest.param(signal.SIGTERM, 0, marks=pytest.mark.slow),
                                             pytest.param(signal.SIGHUP, 2, marks=pytest.mark.slow),
                                             pytest.param(signal.SIGTERM, 2, marks=pytest.mark.slow)])
def test_sigterm_and_sighup_save_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path, signum, workers):
    cfg = _cfg(total_env_steps=200_000, checkpoint_every=1000)
    cfg["env"]["workers"] = workers
    run = tmp_path / "run"
    proc = _popen("train", str(_write_cfg(tmp_path, cfg)), "--run-dir", str(run))
    _wait_rows(run, 2, proc)
    # SIGTERM as `timeout` and `docker stop` send it (the main process); SIGHUP to the whole group
    os.killpg(proc.pid, signum) if signum == signal.SIGHUP else proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    name = signal.Signals(signum).name
    assert f"stopped by {name}" in err and f"marl train --resume {run}" in err.partition("Continue with: ")[2] and "Traceback" not in err
    cut = load_checkpoint(run / CHECKPOINT_NAME)["iteration"]
    assert cut >= 2 and len(read_metrics(run)) == cut   # nothing since the last periodic checkpoint lost
    total = (cut + 2) * 100
    proc = _cli("train", "--resume", str(run), "--set", f"train.total_env_steps={total}")
    assert proc.returncode == 0, proc.stderr
    full = _train({**cfg, "train": {**cfg["train"], "total_env_steps": total}}, tmp_path / "full")
    assert _strip(read_metrics(run)) == _strip(full)


def test_a_second_signal_waits_for_the_save_and_then_stops(tmp_path):
    full, trainer = _full_and_cut(tmp_path, checkpoint_every=1000)
    state_dict = trainer.state_dict

    def signals_during_the_save():
        os.kill(os.getpid(), signal.SIGINT)   # the second Ctrl-C of the pair: arrives mid-save
        out = state_dict()
        os.kill(os.getpid(), signal.SIGTERM)
        return out

    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
        trainer.state_dict = signals_during_the_save

    after_call_in_iteration(trainer, "update", 2, ctrl_c)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT at 300 env steps .*checkpoint saved") as info:
        trainer.train()
    trainer.close()
    assert info.value.saved and load_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME)["iteration"] == 3
    assert _strip(_resume(tmp_path / "cut")) == _strip(full)


def test_a_stop_signal_without_a_run_directory_says_that_nothing_was_saved():
    trainer = Trainer(config_from_dict(_cfg(total_env_steps=800)))
    after_call_in_iteration(trainer, "update", 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at 300 env steps .*no run directory, so "
                                                  "nothing was saved") as info:
        trainer.train()
    trainer.close()
    assert "checkpoint saved" not in str(info.value)


def test_a_second_signal_during_an_iteration_abandons_it_and_keeps_the_last_checkpoint(tmp_path):
    full, trainer = _full_and_cut(tmp_path, checkpoint_every=2)
    original_update = trainer.update

    def update_with_two_ctrl_c():
        if trainer.iteration == 4:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original_update()

    trainer.update = update_with_two_ctrl_c
    with pytest.raises(TrainingInterrupted, match="second SIGINT during iteration 5, which was abandoned; the "
                                                  "checkpoint of iteration 4 is kept") as info:
        trainer.train()
    trainer.close()
    assert not info.value.saved and load_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME)["iteration"] == 4
    assert _strip(_resume(tmp_path / "cut")) == _strip(full)


@pytest.mark.slow   # several CLI processes
@pytest.mark.parametrize("gap_s", [0.05, 0.3])   # the second one during the wind-down or at exit
def test_cli_two_ctrl_c_in_quick_succession_end_without_a_traceback(tmp_path, gap_s):
    run = tmp_path / "run"
    proc = _popen("train", str(_write_cfg(tmp_path, _cfg(total_env_steps=200_000, checkpoint_every=1000))),
                  "--run-dir", str(run))
    _wait_rows(run, 2, proc)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(gap_s)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "marl train --resume" in err.partition("Continue with: ")[2], err
    proc = _cli("train", "--resume", str(run), "--set", "train.total_env_steps=" +
                str((load_checkpoint(run / CHECKPOINT_NAME)["iteration"] + 1) * 100)
                if (run / CHECKPOINT_NAME).exists() else "train.total_env_steps=300")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow   # several CLI processes
def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(tmp_path):
    cfg = _cfg(total_env_steps=200_000, checkpoint_every=1000)
    run = tmp_path / "run"
    proc = _popen("train", str(_write_cfg(tmp_path, cfg)), "--run-dir", str(run))
    _wait_rows(run, 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (run / CHECKPOINT_NAME).exists()
    (run / "checkpoint.pt.k3j2x.tmp").write_bytes(b"half a checkpoint")   # a write the kill cut short
    proc = _cli("train", str(_write_cfg(tmp_path, cfg)), "--run-dir", str(run))
    assert proc.returncode == 2
    _one_line(proc.stderr, f"continue it with --resume {run}")
    proc = _cli("train", "--resume", str(run), "--set", "train.total_env_steps=400")
    assert proc.returncode == 0, proc.stderr
    assert "has no checkpoint yet (stopped before the first one): starting it from the beginning" in proc.stderr
    assert not list(run.glob("*.tmp"))
    full = _train({**cfg, "train": {**cfg["train"], "total_env_steps": 400}}, tmp_path / "full")
    assert _strip(read_metrics(run)) == _strip(full)


def test_a_half_written_metrics_row_is_cut_on_resume(tmp_path, capsys):
    cfg = _cfg(total_env_steps=600, checkpoint_every=2)
    full = _train(cfg, tmp_path / "full")
    _train({**cfg, "train": {**cfg["train"], "total_env_steps": 400}}, tmp_path / "cut")
    with open(tmp_path / "cut" / METRICS_NAME, "a") as f:
        f.write('{"iteration": 5, "env_steps": 500, "team_ret')   # the kill came mid-row
    capsys.readouterr()
    resumed = _resume(tmp_path / "cut", "train.total_env_steps=600")
    err = capsys.readouterr().err
    assert err.count("cut a half-written last line (44 bytes) back to the last complete row") == 1
    assert _strip(resumed) == _strip(full)


# -- resume refuses what it cannot honour -------------------------------------------------------------

@pytest.mark.parametrize("override, key", [("env.kwargs.max_cycles=50", "env.kwargs"),
                                           ("env.num_envs=8", "env.num_envs"), ("env.reward=individual", "env.reward"),
                                           ("model.hidden=16", "model.hidden"), ("env.workers=2", "env.workers"),
                                           ("algo.lr=0.1", "algo.lr"), ("seed=3", "seed")])
def test_resume_refuses_a_set_that_changes_the_runs_state(tmp_path, override, key):
    run = tmp_path / "run"
    _train(_cfg(total_env_steps=200), run)
    before = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=rf"--set {override} changes {key} \(.* in the run, .* now\), which shapes"):
        resume_run(run, [override])
    assert (run / "config.yaml").read_text() == before


def test_resume_allows_the_safe_keys_and_stays_exact(tmp_path):
    cfg = _cfg(total_env_steps=600, checkpoint_every=2)
    full = _train(cfg, tmp_path / "full")
    _train({**cfg, "train": {**cfg["train"], "total_env_steps": 200}}, tmp_path / "cut")
    resumed = _resume(tmp_path / "cut", "train.total_env_steps=600", "train.checkpoint_every=1", "train.log_every=1",
                      "train.eval_episodes=0", "log.histogram_every=3", "train.progress=false")
    assert _strip(resumed) == _strip(full)
    assert load_config(tmp_path / "cut" / "config.yaml").train.checkpoint_every == 1


def test_a_hand_edited_config_that_no_longer_fits_the_checkpoint_is_refused(tmp_path):
    run = tmp_path / "run"
    _train(_cfg(total_env_steps=200), run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("max_cycles: 25", "max_cycles: 50"))
    proc = _cli("train", "--resume", str(run))
    assert proc.returncode == 2
    _one_line(proc.stderr, "was written with env.kwargs={'N': 3, 'max_cycles': 25}, but the run's config now says")


# -- faults end in one line ---------------------------------------------------------------------------

@pytest.mark.slow   # several CLI processes
def test_a_corrupt_checkpoint_is_one_line_and_a_good_copy_resumes(tmp_path):
    run = tmp_path / "run"
    _train(_cfg(total_env_steps=200), run)
    good = (run / CHECKPOINT_NAME).read_bytes()
    rnd = random.Random(0)
    for trial in range(3):
        data = bytearray(good)
        for _ in range(50):
            data[rnd.randrange(len(data))] ^= 0xFF
        (run / CHECKPOINT_NAME).write_bytes(bytes(data))
        for command in (["train", "--resume", str(run)], ["eval", str(run), "--episodes", "1"])[:1 + (trial == 0)]:
            proc = _cli(*command)
            assert proc.returncode == 2, proc.stderr
            _one_line(proc.stderr, f"{run / CHECKPOINT_NAME} is corrupt or not a checkpoint")
    (run / CHECKPOINT_NAME).write_bytes(good)
    assert len(_resume(run, "train.total_env_steps=300")) == 3


def _worker_pids(pid: int) -> list[int]:
    """The env worker processes (multiprocessing spawn children) of process ``pid``."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.mark.slow
def test_a_killed_env_worker_is_named_with_its_exit_and_the_run_resumes_exactly(tmp_path):
    cfg = _cfg(total_env_steps=200_000, checkpoint_every=1)
    cfg["env"]["workers"] = 2
    run = tmp_path / "run"
    proc = _popen("train", str(_write_cfg(tmp_path, cfg)), "--run-dir", str(run))
    _wait_rows(run, 2, proc)
    workers = _worker_pids(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    line = _one_line(err, "env worker 1 of 2 (envs 2-3 of 'mpe2:simple_spread_v3') was killed by SIGKILL "
                          "(exit code -9); the checkpoint of iteration")
    assert f"marl train --resume {run}" in line.partition("continue with ")[2]
    cut = load_checkpoint(run / CHECKPOINT_NAME)["iteration"]
    total = (cut + 2) * 100
    proc = _cli("train", "--resume", str(run), "--set", f"train.total_env_steps={total}")
    assert proc.returncode == 0, proc.stderr
    full = _train({**cfg, "train": {**cfg["train"], "total_env_steps": total}}, tmp_path / "full")
    assert _strip(read_metrics(run)) == _strip(full)


@pytest.mark.slow   # two env worker processes
def test_a_worker_lost_while_saving_fails_the_save_and_keeps_the_last_checkpoint(tmp_path):
    """A dead worker is not an env whose state cannot be saved: the save must not fall back to a
    checkpoint without the env state (CI caught a kill landing in the snapshot that way)."""
    cfg = _cfg(total_env_steps=400, checkpoint_every=1)
    cfg["env"]["workers"] = 2
    trainer = new_run(config_from_dict(cfg), tmp_path / "run")
    try:
        trainer.run_iteration()
        trainer.iteration += 1
        trainer.save()
        os.kill(trainer.venv._procs[1].pid, signal.SIGKILL)
        trainer.venv._procs[1].join(timeout=10)
        trainer.iteration += 1
        with pytest.raises(EnvWorkerLost, match="env worker 1 of 2 .* was killed by SIGKILL"):
            trainer.save()
        assert trainer.saved_iteration == 1
        saved = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
        assert saved["iteration"] == 1 and "env_state" in saved
    finally:
        trainer.close()


@pytest.mark.slow   # several CLI processes
def test_an_unreadable_metrics_file_is_one_line(tmp_path):
    run = tmp_path / "run"
    _train(_cfg(total_env_steps=300), run)
    metrics = run / METRICS_NAME
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text(lines[0] + "{not json\n" + "".join(lines[1:]))   # damaged in the middle
    proc = _cli("train", "--resume", str(run))
    assert proc.returncode == 2
    _one_line(proc.stderr, f"{metrics} line 2 is not JSON")
    metrics.unlink()
    metrics.mkdir()
    proc = _cli("train", "--resume", str(run))
    assert proc.returncode == 2
    _one_line(proc.stderr, f"cannot read {metrics} (Is a directory)")


FULL_DISK_DRIVER = r"""
import os, subprocess, sys
run, cfg, out = sys.argv[1:4]
def cli(*args):
    proc = subprocess.run([sys.executable, "-m", "marl.cli", *args], capture_output=True, text=True)
    return {"rc": proc.returncode, "err": proc.stderr}
steps = []
steps.append(cli("train", cfg, "--run-dir", run))
with open(os.path.join(os.path.dirname(run), "filler"), "wb", buffering=0) as f:   # fill the disk
    try:
        while True:
            f.write(b"x" * 4096)
    except OSError:
        pass
    os.ftruncate(f.fileno(), os.fstat(f.fileno()).st_size - 40_000)   # room for metrics rows, not a checkpoint
steps.append(cli("train", "--resume", run, "--set", "train.total_env_steps=600"))
import torch
steps.append({"iteration": torch.load(os.path.join(run, "checkpoint.pt"), weights_only=True)["iteration"]})
os.unlink(os.path.join(os.path.dirname(run), "filler"))
steps.append(cli("train", "--resume", run, "--set", "train.total_env_steps=600"))
with open(os.path.join(run, "metrics.jsonl")) as f:
    steps.append({"metrics": f.read()})
with open(out, "w") as f:
    import json
    json.dump(steps, f)
"""


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_checkpoint_and_resume_works_afterwards(tmp_path):
    """A real full disk: a 2 MB tmpfs, mounted in a user and mount namespace (``unshare -rm``)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("needs unshare -rm (user namespaces) to mount a small tmpfs")
    cfg = _cfg(total_env_steps=400, checkpoint_every=2)
    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "driver.py").write_text(FULL_DISK_DRIVER)
    script = (f"mount -t tmpfs -o size=2m tmpfs {disk} && {sys.executable} {tmp_path / 'driver.py'} "
              f"{disk / 'run'} {_write_cfg(tmp_path, cfg)} {tmp_path / 'out.json'}")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    first, full, kept, resumed, metrics = json.loads((tmp_path / "out.json").read_text())
    assert first["rc"] == 0, first["err"]
    assert full["rc"] == 2, full["err"]
    _one_line(full["err"], "No space left on device")
    assert "marl train --resume" in full["err"].partition("the checkpoint of iteration 4 is kept: continue with ")[2]
    assert kept["iteration"] == 4
    assert resumed["rc"] == 0, resumed["err"]
    records = [json.loads(line) for line in metrics["metrics"].splitlines()]
    uninterrupted = _train({**cfg, "train": {**cfg["train"], "total_env_steps": 600}}, tmp_path / "full")
    assert _strip(records) == _strip(uninterrupted)


# -- inspection commands never overwrite a run's records ----------------------------------------------

@pytest.mark.slow   # several CLI processes
def test_eval_writes_its_own_file_and_compare_a_new_directory(tmp_path):
    run = tmp_path / "run"
    proc = _cli("train", str(_write_cfg(tmp_path, tiny_config(train={"total_env_steps": 200, "eval_episodes": 3}))),
                "--run-dir", str(run))
    assert proc.returncode == 0, proc.stderr
    training_eval = (run / "eval.json").read_text()
    outs = []
    for _ in range(2):
        proc = _cli("eval", str(run), "--episodes", "2")
        assert proc.returncode == 0, proc.stderr
        outs.append(Path(proc.stdout.strip().splitlines()[-1].removeprefix("wrote ")))
    assert outs[0] != outs[1] and all(p.parent == run and p.name.startswith("eval_") for p in outs)
    assert json.loads(outs[0].read_text())["episodes"] == 2
    assert (run / "eval.json").read_text() == training_eval
    proc = _cli("eval", str(run), "--episodes", "2", "--out", str(outs[0]))
    assert proc.returncode == 2
    _one_line(proc.stderr, "already exists; pick another --out")

    made = []
    for _ in range(2):
        proc = _cli("compare", str(run), "--reps", "50", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        made.append(proc.stdout.strip().splitlines()[-1])
    assert made[0] != made[1] and all("compare-" in m for m in made)
    assert len(list(tmp_path.glob("compare-*/compare.md"))) == 2 and not (tmp_path / "compare.md").exists()
