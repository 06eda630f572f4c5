"""Tests for jaxae.placement: starting, parking and restoring members without recompiling, an
empty population's hyperparameters, and the refusal of what a program cannot hold."""

import jax
import numpy as np
import pytest
from test_population import SPEC, member, run

from jaxae import hparams, placement
from jaxae import population as P
from jaxae.models import ModelSpec, kernel_matrix


def test_an_empty_population_holds_defaults_at_the_padded_sizes():
    pop = jax.device_get(placement.create(SPEC, 3))
    named = hparams.by_name(pop.hparams)
    assert set(named) == set(hparams.ARRAY_NAMES) | {"horizon"}
    assert all(leaf.shape == (3,) and leaf.dtype == np.float32 for leaf in named.values())
    assert named["hidden"].tolist() == [32] * 3 and named["latent_dim"].tolist() == [8] * 3
    assert named["learning_rate"].tolist() == [np.float32(1e-3)] * 3
    assert named["horizon"].tolist() == [1.0] * 3 and pop.trial.tolist() == [-1] * 3


def test_assign_writes_each_members_row_and_leaves_the_others():
    pop = placement.assign(SPEC, placement.create(SPEC, 3), [2, 0], [
        member(4, learning_rate=0.05, grad_clip=2.0, schedule="cosine"),
        placement.Member(5, member(5).config, 9, P.trial_keys(0, 5), horizon=30)])
    hp = hparams.by_name(jax.device_get(pop.hparams))
    assert hp["learning_rate"].tolist() == [np.float32(1e-3), np.float32(1e-3), np.float32(0.05)]
    assert hp["grad_clip"][2] == 2.0 and np.isinf(hp["grad_clip"][0])
    assert hp["schedule"].tolist() == [0.0, 0.0, float(hparams.SCHEDULES.index("cosine"))]
    # horizon: the member's own, else its target; slot 1 keeps the empty population's.
    assert hp["horizon"].tolist() == [30.0, 1.0, 40.0]
    assert jax.device_get(pop.trial).tolist() == [5, -1, 4]


def test_assigning_new_hyperparameters_does_not_recompile(digits):
    pop = placement.create(SPEC, 4)
    pop = placement.assign(SPEC, pop, [0, 1, 2, 3], [member(t) for t in range(4)])
    pop, _ = P.train_chunk(SPEC, pop, digits, 5)
    P.evaluate(SPEC, pop, digits)
    before = dict(P.TRACES)
    for round_ in range(3):
        news = [member(10 + round_, learning_rate=0.01 * (round_ + 1), b1=0.5, weight_decay=1e-4,
                       grad_clip=1.0, latent_dim=4, hidden=16)]
        pop = placement.assign(SPEC, pop, [round_], news)
        pop, _ = P.train_chunk(SPEC, pop, digits, 5)
        P.evaluate(SPEC, pop, digits)
    assert dict(P.TRACES) == before


def test_place_parks_a_paused_trial_and_restores_it_in_another_slot(digits):
    pop = placement.assign(SPEC, placement.create(SPEC, 3), [1], [member(7, target=10)])
    pop, _ = P.train_chunk(SPEC, pop, digits, 10)
    host = jax.device_get(pop)
    parked = jax.tree.map(lambda a: np.zeros((4, *a.shape[1:]), a.dtype), host)
    none = np.full(3, -1, np.int32)

    def plan(park, restore, trial, target):
        keys = {k: np.array(getattr(host, k)) for k in ("init_key", "data_key", "eval_key")}
        if restore[2] >= 0:  # the continuing member's keys and hyperparameters come along
            for k in keys:
                keys[k][2] = keys[k][1]
        hp = jax.tree.map(np.array, host.hparams)
        for leaf in jax.tree.leaves(hp):
            leaf[2] = leaf[1]
        return placement.Plan(np.zeros(3, bool), park, restore, hp, keys["init_key"],
                              keys["data_key"], keys["eval_key"], np.asarray(target, np.int32),
                              np.asarray(trial, np.int32)).pack()

    # Pause: slot 1 parks in row 3 and empties; continue: row 3 comes back in slot 2.
    pop, parked = placement.place(SPEC, pop, parked, plan(np.array([-1, 3, -1], np.int32), none,
                                                          [-1, -1, -1], [0, 10, 0]))
    np.testing.assert_array_equal(np.asarray(parked.params["enc_0"]["kernel"])[3],
                                  np.asarray(host.params["enc_0"]["kernel"])[1])
    pop, parked = placement.place(SPEC, pop, parked, plan(none, np.array([-1, -1, 3], np.int32),
                                                          [-1, -1, 7], [0, 10, 20]))
    assert np.asarray(pop.step).tolist()[2] == 10
    pop, _ = P.train_chunk(SPEC, pop, digits, 10)
    straight, _ = run(SPEC, [member(7, target=20)], [0], 1, digits, 20)
    np.testing.assert_allclose(
        np.asarray(P.evaluate(SPEC, pop, digits)["val_loss"])[2],
        np.asarray(P.evaluate(SPEC, straight, digits)["val_loss"])[0], rtol=1e-5,
    )


def test_blocks_with_nothing_to_place_keep_their_members_and_any_block_gives_the_same_numbers(
        digits, monkeypatch):
    # 12 slots in blocks of 4: slots 1 and 10 start (blocks 0 and 2), slot 5 parks into row 1
    # (block 1) and slot 11 continues row 0's member; against the same plan in one block of 12.
    n = 12
    pop = placement.assign(SPEC, placement.create(SPEC, n), list(range(n)),
                           [member(t) for t in range(n)])
    pop, _ = P.train_chunk(SPEC, pop, digits, 3)
    before = jax.device_get(pop)
    keys = {k: np.array(getattr(before, k)) for k in ("init_key", "data_key", "eval_key")}
    hp = jax.tree.map(np.array, before.hparams)
    news = {1: member(40, learning_rate=0.02, hidden=16), 10: member(41, latent_dim=4)}
    hparams.set_rows(hp, list(news), hparams.slot_hparams([m.config for m in news.values()],
                                                          [m.target for m in news.values()]))
    for slot, m in news.items():
        for k in keys:
            keys[k][slot] = m.keys[k]
    new = np.zeros(n, bool)
    new[list(news)] = True
    park, restore = np.full(n, -1, np.int32), np.full(n, -1, np.int32)
    park[5], restore[11] = 1, 0
    plan = placement.Plan(new, park, restore, hp, keys["init_key"], keys["data_key"],
                          keys["eval_key"], np.array(before.target), np.array(before.trial))

    def placed(block):
        monkeypatch.setattr(placement, "CPU_PLACE_BLOCK", block)
        placement.place.clear_cache()  # traced again with this block
        traces = P.TRACES["place"]
        parked = jax.tree.map(lambda a: np.array(a[:2]), before)  # row 0: slot 0's member
        out = jax.device_get(placement.place(SPEC, jax.device_put(before),
                                             jax.device_put(parked), plan.pack()))
        assert P.TRACES["place"] == traces + 1
        return out

    (after, parked), (whole, whole_parked) = placed(4), placed(n)
    for got, want in zip(jax.tree.leaves((after, parked)), jax.tree.leaves((whole, whole_parked)),
                         strict=True):
        np.testing.assert_array_equal(got, want)
    for slot, m in news.items():  # as a lone init draws them (up to XLA's fusion of the draws)
        one = jax.tree.map(lambda a: jax.numpy.asarray(a[slot]), hp)
        params, _ = placement.init_member(SPEC, jax.numpy.asarray(m.keys["init_key"]), one.model)
        for got, want in zip(jax.tree.leaves(after.params), jax.tree.leaves(params), strict=True):
            np.testing.assert_allclose(got[slot], want, rtol=1e-6, atol=1e-7)
        assert after.step[slot] == 0
    for got, was, saved in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.params),
                               jax.tree.leaves(parked.params), strict=True):
        for slot in set(range(n)) - set(news) - {11}:
            np.testing.assert_array_equal(got[slot], was[slot])
        np.testing.assert_array_equal(got[11], was[0])  # restored from row 0
        np.testing.assert_array_equal(saved[1], was[5])  # parked into row 1
    assert after.step[11] == before.step[0] == 3


def test_init_variance_follows_the_true_width():
    spec = P.TrainSpec(ModelSpec("ae", 64, hidden=512, latent_dim=64), "adam", 32)
    pop = placement.assign(spec, placement.create(spec, 1), [0],
                           [member(0, spec=spec, hidden=32, latent_dim=64)])
    kernel = np.asarray(kernel_matrix(spec.model, pop.params, "output")[0])[:32]  # 32 used inputs
    # LeCun normal (truncated at 2 std, rescaled): variance 1 / fan_in with the *used* fan-in.
    assert kernel.var() == pytest.approx(1 / 32, rel=0.1)


def test_dropout_in_a_program_without_dropout_is_refused():
    with pytest.raises(ValueError, match="dropout"):
        placement.assign(SPEC, placement.create(SPEC, 1), [0], [member(0, dropout=0.1)])
