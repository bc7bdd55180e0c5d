"""Image observations (``tests/image_envs.py``): the encoder ``model.encoder`` picks, the critic's
image state, uint8 buffers, checkpoints without observation batches, and an image env *learned*
with the default config against its optimum."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import yaml
from gymnasium import spaces

from marl.checkpoint import CHECKPOINT_NAME, load_checkpoint
from marl.config import config_from_dict
from marl.envs import make_env
from marl.envs.snapshot import restore, snapshot
from marl.envs.team_env import image_layout
from marl.networks import ImageEncoder
from marl.trainer import Trainer
from tests.conftest import default_config, tiny_config, train_run
from tests.image_envs import BlobQuadrants

BLOBS = "tests.image_envs:blob_quadrants"


def _trainer(env_kwargs=None, **sections) -> Trainer:
    cfg = tiny_config(env={"id": BLOBS, "kwargs": env_kwargs or {}}, **sections)
    return Trainer(config_from_dict(cfg), None)


@pytest.mark.parametrize("with_state", [True, False])
def test_the_image_env_follows_the_parallel_api(with_state):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # pettingzoo.test imports its deprecated classic envs
        from pettingzoo.test import parallel_api_test
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parallel_api_test(BlobQuadrants(with_state=with_state), num_cycles=100)


@pytest.mark.parametrize("shape, dtype, expected", [
    ((280, 480, 3), np.uint8, ((280, 480, 3), True, True)),
    ((3, 84, 84), np.float32, ((3, 84, 84), False, False)),
    ((16, 16, 1), np.float32, ((16, 16, 1), True, False)),
    ((16, 16), np.uint8, None),            # 2-d: no channels
    ((5, 5, 3), np.uint8, None),           # too small to be an image
    ((16, 16, 16), np.float32, None),      # no channel axis of 1-4
    ((48,), np.float32, None),
])
def test_image_shaped_boxes_are_recognised(shape, dtype, expected):
    layout = image_layout(shape, dtype)
    assert (None if layout is None else tuple(layout)) == expected


def test_uint8_images_stay_uint8_from_the_env_to_the_rollout():
    env = make_env(BLOBS)
    assert env.obs_image.shape == (16, 16, 3) and env.state_image.shape == (16, 16, 3)
    assert env.obs_dtype == np.uint8 and env.state_dtype == np.uint8 and not env.state_is_obs
    first = env.reset(seed=3)
    assert first.obs.dtype == np.uint8 and first.obs.shape == (2, 768) and first.state.dtype == np.uint8
    trainer = _trainer()
    try:
        trainer.run_iteration()
        rollout = trainer.rollout
        assert {rollout.obs.dtype, rollout.next_obs.dtype, rollout.state.dtype, rollout.next_state.dtype} == {np.dtype(np.uint8)}
        assert rollout.obs.max() == 255   # the blobs, unscaled
    finally:
        trainer.close()


def test_auto_picks_the_cnn_for_images_and_the_mlp_for_flat_observations():
    images = _trainer()
    flat = Trainer(config_from_dict(tiny_config()), None)
    forced_mlp = _trainer(model={"encoder": "mlp"})
    try:
        assert isinstance(images.actor.encoder, ImageEncoder)
        assert isinstance(images.learner.critic.state_encoder, ImageEncoder)
        assert images.actor.encoder is not images.learner.critic.state_encoder
        assert flat.actor.encoder is None and flat.learner.critic.state_encoder is None
        # model.encoder: mlp reads the 16x16x3 image flat (768 pixels, plus the agent id), as uint8 converted
        assert forced_mlp.actor.encoder is None
        assert forced_mlp.actor.net.body[0].weight.shape[-1] == 768 + 2
        for trainer in (images, flat, forced_mlp):
            metrics = trainer.run_iteration()[2]
            assert np.isfinite(metrics["losses/value"])
    finally:
        for trainer in (images, flat, forced_mlp):
            trainer.close()


def test_the_encoder_subsamples_large_images_before_its_first_convolution():
    small = ImageEncoder(image_layout((16, 16, 3), np.uint8), 64)
    screen = ImageEncoder(image_layout((280, 480, 3), np.uint8), 64)
    channels_first = ImageEncoder(image_layout((3, 280, 480), np.float32), 64)
    assert small.stride == 1 and screen.stride == 8 and channels_first.stride == 8
    pixels = torch.randint(0, 256, (5, 2, 280 * 480 * 3), dtype=torch.uint8)
    prepared = screen.prepare(pixels)
    assert prepared.shape == (5, 2, 3, 35, 60) and prepared.dtype == torch.float32
    image = pixels.reshape(5, 2, 280, 480, 3)
    torch.testing.assert_close(prepared[1, 0, :, 2, 3], image[1, 0, 16, 24].float() / 255)
    # the same pixels laid out channels first give the same input
    as_chw = image.permute(0, 1, 4, 2, 3).reshape(5, 2, -1).float()
    torch.testing.assert_close(channels_first.prepare(as_chw), prepared * 255)
    assert screen(prepared).shape == (5, 2, 64)


def test_the_critic_encodes_an_image_state_and_never_reads_raw_images_side_by_side():
    """With ``state()`` the central critic encodes the state image; without it, each agent's image
    goes through the critic's own image encoder and the MLP reads the N feature vectors."""
    with_state, without = _trainer(), _trainer({"with_state": False})
    try:
        critic = with_state.learner.critic
        assert critic.obs_encoder is None and critic.net.body[0].weight.shape[-1] == 32   # model.hidden
        critic = without.learner.critic
        assert without.venv.state_is_obs and critic.state_encoder is None
        assert isinstance(critic.obs_encoder, ImageEncoder)
        assert critic.net.body[0].weight.shape[-1] == 2 * 32   # two agents' features, not 2 x 768 pixels
        state = torch.from_numpy(without.venv.current()["state"])   # [B, 2 * 768] uint8
        x = critic.inputs(state, None)
        assert x.shape == (4, 2, 3, 16, 16)
        swapped = critic.inputs(torch.cat([state[:, 768:], state[:, :768]], -1), None)
        torch.testing.assert_close(swapped, x.flip(1))   # agent by agent
        for trainer in (with_state, without):
            assert np.isfinite(trainer.run_iteration()[2]["losses/value"])
    finally:
        with_state.close()
        without.close()


@pytest.mark.parametrize("sections, needle", [
    ({"model": {"encoder": "cnn"}}, "'model.encoder': 'cnn' needs image observations"),
    ({"env": {"id": BLOBS, "kwargs": {}}, "algo": {"advantage": "coma"}}, "'algo.advantage'"),
    ({"env": {"id": BLOBS, "kwargs": {}}, "algo": {"critic": "agent_state"}}, "'algo.critic'"),
])
def test_an_encoder_that_does_not_fit_the_env_is_a_one_line_config_error(tmp_path, sections, needle):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(**sections)))
    proc = subprocess.run([sys.executable, "-m", "marl.cli", "train", str(path), "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_large_constant_box_is_snapshot_by_its_bounds():
    box = spaces.Box(0, 255, (280, 480, 3), np.uint8)
    box.seed(7)
    blob = snapshot(box)
    copy = restore(blob)
    assert len(blob) < 5_000   # 4 x 403,200 bytes of bounds otherwise
    assert copy == box and copy.dtype == np.uint8
    np.testing.assert_array_equal(copy.sample(), box.sample())   # its random state too


def test_an_image_env_is_learned_with_the_default_config(tmp_path):
    """Two agents name the quadrant of their own blob in a 16x16x3 uint8 picture: optimum 10 (2
    agents x 5 steps), random 2.5. The default config (spread_mappo.yaml, 32 envs) reaches 80% of
    the optimum in 24k steps, and its checkpoint holds networks and envs (32 live envs, 96 images
    of 768 bytes), no rollout: under 1 MB."""
    records, evaluation = train_run(default_config(BLOBS, 24_000), tmp_path / "run")
    assert records[0]["team_return"] < 3.5
    assert evaluation["team_return_mean"] >= 8.0
    checkpoint = tmp_path / "run" / CHECKPOINT_NAME
    assert checkpoint.stat().st_size < 1_000_000
    state = load_checkpoint(checkpoint)
    assert "env_state" in state and "prefetched_rollout" not in state
    assert sum(part.numel() for part in state["env_state"]) < 300_000


@pytest.mark.slow
@pytest.mark.parametrize("env_id, num_envs", [
    ("pettingzoo.butterfly.cooperative_pong_v6:parallel_env", 32),   # the default config as it is
    ("pettingzoo.butterfly.pistonball_v6:parallel_env", 4),   # 20 agents: 32 envs would hold 7.7 GB of images
])
def test_butterfly_image_envs_train_with_the_default_config(tmp_path, env_id, num_envs):
    """Two iterations with the default config: no error, and a checkpoint of the networks only
    (these envs draw their observations on a pygame surface, which a snapshot cannot hold, so their
    live state is not saved), under 50 MB."""
    cfg = default_config(env_id, 50 * num_envs)
    cfg["env"]["num_envs"] = num_envs
    cfg["train"]["eval_episodes"] = 1
    records, _ = train_run(cfg, tmp_path / "run")
    assert len(records) == 2 and all(np.isfinite(r["losses/value"]) for r in records)
    checkpoint = tmp_path / "run" / CHECKPOINT_NAME
    assert checkpoint.stat().st_size < 50e6
    assert "env_state" not in load_checkpoint(checkpoint)


def test_a_rotated_screen_view_is_copied_pixel_by_pixel_in_c_order():
    """PettingZoo's butterfly envs return their screen as a rotated and flipped view."""
    from marl.envs.team_env import _write_image

    screen = np.random.default_rng(0).integers(0, 256, (48, 28, 3), dtype=np.uint8)
    view = np.fliplr(np.rot90(screen, k=3))
    row = np.empty(view.size, np.uint8)
    _write_image(row, view)
    np.testing.assert_array_equal(row, np.ascontiguousarray(view).reshape(-1))
    as_float = np.empty(view.size, np.float32)
    _write_image(as_float, view)   # and converted where the dtypes differ
    np.testing.assert_array_equal(as_float, row.astype(np.float32))
