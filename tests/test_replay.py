"""Episode replay: slots match the episodes stored, chunks, padding, no leak in an unroll, wrap-around,
prioritised sampling and exact state_dict round trips."""
import io

import pytest
import torch

from marl.replay import EpisodeReplay, Field, TensorRing, episode_fields

N, O, S, A = 2, 3, 4, 5


def make_episodes(lengths, first_id=0, L=None):
    """E episodes, time-major, whose obs encode (episode id, step): obs[t, e, i] = [id + 1, t, i]."""
    lengths = torch.as_tensor(lengths)
    L = L or int(lengths.max())
    E = len(lengths)
    t_nodes = torch.arange(L + 1, dtype=torch.float32)[:, None].expand(L + 1, E)
    ids = (first_id + torch.arange(E, dtype=torch.float32) + 1)[None].expand(L + 1, E)
    obs = torch.stack([ids[..., None].expand(-1, -1, N), t_nodes[..., None].expand(-1, -1, N),
                       torch.arange(N, dtype=torch.float32).expand(L + 1, E, N)], dim=-1)
    steps = torch.arange(L)[:, None]
    last = steps == (lengths - 1)
    even = (first_id + torch.arange(E)) % 2 == 0
    return {
        "obs": obs,
        "state": torch.cat([ids[..., None], t_nodes[..., None], torch.zeros(L + 1, E, S - 2)], dim=-1),
        "avail": (torch.arange(A) <= (t_nodes[..., None, None] % A)).expand(L + 1, E, N, A),
        "alive": (torch.arange(N) <= (t_nodes[..., None] % N)),
        "actions": (steps % A).expand(L, E)[..., None].expand(L, E, N).clone(),
        "reward": (ids[:L] * 100 + t_nodes[:L])[..., None],
        "terminated": (last & even)[..., None],
        "truncated": (last & ~even)[..., None],
    }


def expected_chunk(episodes, lengths, e, j, C):
    """Slot contents of chunk j of episode e, built step by step: rows past the chunk are zero."""
    size = min(C, int(lengths[e]) - j * C)
    out = {}
    for name, x in episodes.items():
        nodes = name in ("obs", "state", "avail", "alive")
        slot = torch.zeros(C + nodes, *x.shape[2:], dtype=x.dtype)
        for r in range(size + nodes):
            slot[r] = x[j * C + r, e]
        out[name] = slot
    out["filled"] = torch.tensor([r < size for r in range(C)])
    out["first"] = torch.tensor([r == 0 and j == 0 for r in range(C)])
    return out


def check_sample(sample, stored, C):
    """Every sampled column equals the chunk it came from (identified by its obs), padding zero."""
    T = sample.filled.shape[0]
    assert T == int(sample.filled.sum(0).max())
    for b in range(sample.filled.shape[1]):
        eid, t0 = int(sample.data["obs"][0, b, 0, 0]) - 1, int(sample.data["obs"][0, b, 0, 1])
        episodes, lengths, offset = stored[eid]
        want = expected_chunk(episodes, lengths, eid - offset, t0 // C, C)
        for name, x in sample.data.items():
            rows = T + (name in ("obs", "state", "avail", "alive"))
            assert x.shape[0] == rows and torch.equal(x[:, b], want[name][:rows].to(x.dtype)), name
        assert torch.equal(sample.filled[:, b], want["filled"][:T])
        assert torch.equal(sample.first[:, b], want["first"][:T])


def test_sampled_slots_are_the_stored_episodes_chunked_and_padded():
    C = 4
    replay = EpisodeReplay(episode_fields(N, O, S, A), capacity=50, chunk=C, seed=3)
    lengths = torch.tensor([3, 4, 9, 1, 6])            # 1, 1, 3, 1 and 2 chunks
    episodes = make_episodes(lengths)
    assert replay.add(episodes, lengths) == 8 and len(replay) == 8
    stored = {e: (episodes, lengths, 0) for e in range(5)}
    seen = set()
    for _ in range(20):
        sample = replay.sample(6)
        check_sample(sample, stored, C)
        seen |= set(sample.index.tolist())
        ends = sample.data["terminated"] | sample.data["truncated"]
        assert (ends[..., 0] <= sample.filled).all()         # episode ends only on real steps
    assert seen == set(range(8))


def test_a_recurrent_unroll_never_sees_another_episode():
    """A GRU unrolled over sampled slots from a zero state gives, at every real step, what it gives
    on the chunk alone, also after short episodes overwrote long ones (wrap-around)."""
    C = 5
    torch.manual_seed(0)
    gru = torch.nn.GRU(O, 8)
    replay = EpisodeReplay(episode_fields(N, O, S, A), capacity=6, chunk=C, seed=1)
    long = make_episodes(torch.tensor([5, 5, 5, 5, 5, 5]))
    replay.add(long, torch.tensor([5] * 6))
    short_lengths = torch.tensor([2, 1, 3, 5, 1])
    short = make_episodes(short_lengths, first_id=6)
    replay.add(short, short_lengths)
    stored = {**{e: (long, torch.tensor([5] * 6), 0) for e in range(6)},
              **{6 + e: (short, short_lengths, 6) for e in range(5)}}
    sample = replay.sample(32)
    check_sample(sample, stored, C)
    T, B = sample.filled.shape
    out, _ = gru(sample.data["obs"][:T].reshape(T, B * N, O))
    out = out.reshape(T, B, N, -1)
    for b in range(B):
        size = int(sample.filled[:, b].sum())
        alone, _ = gru(sample.data["obs"][:size, b])
        assert torch.allclose(out[:size, b], alone, atol=1e-6)
        assert not sample.filled[size:, b].any()


def test_capacity_wraps_around_oldest_first():
    replay = EpisodeReplay(episode_fields(N, O, S, A), capacity=4, chunk=3)
    for e in range(6):
        replay.add(make_episodes([2], first_id=e), torch.tensor([2]))
    held = replay.ring.storage["obs"][:, 0, 0, 0].tolist()
    assert held == [5.0, 6.0, 3.0, 4.0] and len(replay) == 4 and replay.ring.position == 2
    replay.add(make_episodes([1] * 7, first_id=10), torch.tensor([1] * 7))   # more than capacity at once
    assert sorted(replay.ring.storage["obs"][:, 0, 0, 0].tolist()) == [14.0, 15.0, 16.0, 17.0]


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_state_dict_round_trip_is_exact(alpha):
    fields = episode_fields(N, O, S, A)
    replay = EpisodeReplay(fields, capacity=5, chunk=4, seed=7, alpha=alpha)
    replay.add(make_episodes([3, 9, 2]), torch.tensor([3, 9, 2]))          # 6 slots: wrapped
    replay.update_priorities(torch.tensor([0, 2]), torch.tensor([5.0, 0.1]))
    buffer = io.BytesIO()
    torch.save(replay.state_dict(), buffer)
    size = buffer.tell()
    buffer.seek(0)
    copy = EpisodeReplay(fields, capacity=5, chunk=4, seed=99, alpha=alpha)
    copy.load_state_dict(torch.load(buffer, weights_only=True))
    assert size < replay.nbytes() + 20_000                                 # the checkpoint is the storage
    more = make_episodes([4], first_id=20)
    for r in (replay, copy):
        r.add(more, torch.tensor([4]))
    for _ in range(3):
        a, b = replay.sample(4, beta=0.5), copy.sample(4, beta=0.5)
        assert all(torch.equal(a.data[k], b.data[k]) for k in fields)
        assert torch.equal(a.index, b.index) and torch.equal(a.weight, b.weight)
        assert torch.equal(a.filled, b.filled) and torch.equal(a.first, b.first)
    with pytest.raises(ValueError, match="state holds chunks of 4 steps, this replay's chunk is 5"):
        EpisodeReplay(fields, capacity=5, chunk=5).load_state_dict(replay.state_dict())


def test_prioritised_sampling_follows_priorities_with_importance_weights():
    replay = EpisodeReplay(episode_fields(N, O, S, A), capacity=4, chunk=3, alpha=1.0, seed=0)
    replay.add(make_episodes([2, 2, 2, 2]), torch.tensor([2] * 4))
    replay.update_priorities(torch.arange(4), torch.tensor([8.0, 1.0, 1.0, 0.0]))
    sample = replay.sample(4000, beta=1.0)
    freq = torch.bincount(sample.index, minlength=4).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.8, 0.1, 0.1, 0.0]), atol=0.03)
    # w = (n P)^-β / max: slot 0 (P = .8) weighs 0.1 / 0.8 of a slot with P = .1
    w = {int(i): float(x) for i, x in zip(sample.index, sample.weight)}
    assert w[1] == pytest.approx(1.0) and w[0] == pytest.approx(0.125, rel=1e-4)
    replay.add(make_episodes([2], first_id=9), torch.tensor([2]))           # a new slot gets the max
    assert replay.priorities[0].item() == pytest.approx(8.0 + 1e-6)
    uniform = EpisodeReplay(episode_fields(N, O, S, A), capacity=4, chunk=3)
    uniform.add(make_episodes([2]), torch.tensor([2]))
    assert torch.equal(uniform.sample(3).weight, torch.ones(3))


def test_refusals_name_the_problem():
    fields = episode_fields(N, O, S, A)
    replay = EpisodeReplay(fields, capacity=4, chunk=3)
    with pytest.raises(ValueError, match="the replay is empty"):
        replay.sample(2)
    episodes = make_episodes([2, 3])
    with pytest.raises(ValueError, match=r"lengths must be \[E\] ints in \[1, 3\]"):
        replay.add(episodes, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="expected \\['actions'"):
        replay.add({k: v for k, v in episodes.items() if k != "reward"}, torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="kept by the replay itself"):
        EpisodeReplay({"filled": Field((1,))}, capacity=2, chunk=2)
    ring = TensorRing(2, {"x": ((3,), torch.float32)})
    with pytest.raises(ValueError, match=r"x has rows of shape \(4,\), expected \(3,\)"):
        ring.write({"x": torch.zeros(1, 4)})


def test_a_ring_widens_keeping_what_it_holds_and_samples_only_held_slots():
    """``widen`` (the redistributor's episodes grow as longer ones arrive) keeps each slot's rows at
    the start and zeros the new room; ``sample_indices`` draws only from the slots held."""
    ring = TensorRing(4, {"x": ((2, 3), torch.float32), "n": ((), torch.int64)})
    ring.write({"x": torch.ones(3, 2, 3), "n": torch.arange(3)})
    ring.widen({"x": (5, 3)})
    assert ring.storage["x"].shape == (4, 5, 3)
    assert (ring.storage["x"][:3, :2] == 1).all() and (ring.storage["x"][:, 2:] == 0).all()
    ring.write({"x": torch.full((1, 5, 3), 2.0), "n": torch.tensor([7])})
    assert ring.read(torch.tensor([3]))["x"].eq(2.0).all()
    with pytest.raises(ValueError, match=r"x can only grow from \(5, 3\), got \(4, 3\)"):
        ring.widen({"x": (4, 3)})
    small = TensorRing(8, {"n": ((), torch.int64)})
    small.write({"n": torch.arange(3)})
    drawn = small.sample_indices(200, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {0, 1, 2}
