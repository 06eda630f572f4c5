import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import grouping, hparams, placement
from jaxae import population as P
from jaxae.models import ModelSpec, kernel_matrix

SPEC = P.TrainSpec(ModelSpec("ae", 64, hidden=32, latent_dim=8), "adam", 32)


def member(trial, seed=0, target=40, spec=SPEC, **values):
    sizes = {"hidden": spec.model.hidden, "latent_dim": spec.model.latent_dim}
    config = hparams.resolve(spec.model.kind, {**sizes, **values})
    return placement.Member(trial, config, target, P.trial_keys(seed, trial))


def run(spec, members, slots, size, data, steps):
    pop = placement.assign(spec, placement.create(spec, size), slots, members)
    pop, losses = P.train_chunk(spec, pop, data, steps)
    return pop, np.asarray(losses)


def test_member_of_population_equals_solo_run(digits):
    lrs = np.geomspace(1e-4, 1e-2, 8)
    members = [member(t, learning_rate=float(lr)) for t, lr in enumerate(lrs)]
    slots = [5, 0, 7, 3, 1, 6, 2, 4]  # trial t deliberately not in slot t
    pop, losses = run(SPEC, members, slots, 8, digits, 40)
    val = np.asarray(P.evaluate(SPEC, pop, digits)["val_loss"])
    for t in (0, 3, 7):
        solo_pop, solo = run(SPEC, [members[t]], [0], 1, digits, 40)
        np.testing.assert_allclose(losses[slots[t]], solo[0], rtol=1e-5, atol=1e-6)
        solo_val = np.asarray(P.evaluate(SPEC, solo_pop, digits)["val_loss"])[0]
        np.testing.assert_allclose(val[slots[t]], solo_val, rtol=1e-5)
    assert np.all(np.diff(val[[slots[t] for t in (0, 7)]]) < 0)  # lr 1e-2 beats 1e-4 in 40 steps


def test_solo_run_matches_a_hand_written_training_loop(digits):
    """Independent check of the trainer: plain jax.grad + optax.adam, same data order."""
    import optax

    from jaxae.models import init_params, make_masks
    from jaxae.objectives import make_objective

    m = member(3, learning_rate=3e-3)
    _, losses = run(SPEC, [m], [0], 1, digits, 15)
    masks = make_masks(SPEC.model, 32, 8)
    params = init_params(SPEC.model, m.keys["init_key"], masks)
    opt = optax.adam(3e-3)
    state = opt.init(params)
    objective = make_objective(SPEC.model)
    hp = jax.tree.map(lambda a: jnp.asarray(a[0]), hparams.slot_hparams([m.config], [15]))
    expected = []
    for step in range(15):
        k_batch, k_noise = jax.random.split(jax.random.fold_in(m.keys["data_key"], step))
        idx = jax.random.randint(k_batch, (SPEC.batch_size,), 0, digits.shape[0])
        (loss, _), grads = jax.value_and_grad(objective, has_aux=True)(
            params, digits[idx], k_noise, hp.model, hp.penalty
        )
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        expected.append(float(loss))
    np.testing.assert_allclose(losses[0], expected, rtol=1e-5)


def test_diverging_slot_is_frozen_flagged_and_harmless(digits):
    members = [member(t, learning_rate=1e-3 * (t + 1)) for t in range(4)]
    clean_pop, clean = run(SPEC, members, [0, 1, 2, 3], 4, digits, 30)
    pop = placement.assign(SPEC, placement.create(SPEC, 4), [0, 1, 2, 3], members)
    bad = jax.tree.map(lambda a: a.at[2].set(jnp.nan) if a.dtype == jnp.float32 else a, pop.params)
    pop = pop.replace(params=bad)
    frozen_params = jax.tree.map(lambda a: np.asarray(a[2]), pop.params)
    pop, losses = P.train_chunk(SPEC, pop, digits, 30)
    losses = np.asarray(losses)
    assert np.asarray(pop.diverged).tolist() == [False, False, True, False]
    assert int(pop.step[2]) == 0 and np.all(np.asarray(pop.step)[[0, 1, 3]] == 30)
    chex.assert_trees_all_equal(jax.tree.map(lambda a: np.asarray(a[2]), pop.params), frozen_params)
    for s in (0, 1, 3):
        np.testing.assert_array_equal(losses[s], clean[s])
    chex.assert_trees_all_equal(
        jax.tree.map(lambda a: a[np.array([0, 1, 3])], pop.params),
        jax.tree.map(lambda a: a[np.array([0, 1, 3])], clean_pop.params),
    )


def test_huge_learning_rate_diverges_only_its_slot(digits):
    blowup = member(1)
    members = [member(0), placement.Member(1, {**blowup.config, "learning_rate": 1e30}, 40,
                                           blowup.keys)]
    pop, losses = run(SPEC, members, [0, 1], 2, digits, 40)
    assert np.asarray(pop.diverged).tolist() == [False, True]
    assert np.isfinite(losses[0]).all()


def test_slots_train_until_their_target_and_can_be_continued(digits):
    members = [member(0, target=10), member(1, target=25)]
    pop = placement.assign(SPEC, placement.create(SPEC, 2), [0, 1], members)
    pop, losses = P.train_chunk(SPEC, pop, digits, 20)
    assert np.asarray(pop.step).tolist() == [10, 20]
    assert np.isnan(np.asarray(losses)[0, 10:]).all()
    pop = placement.set_targets(pop, [0], [20])
    pop, _ = P.train_chunk(SPEC, pop, digits, 20)
    assert np.asarray(pop.step).tolist() == [20, 25]
    # Training 10 + 10 steps equals training 20 in one go (keys come from the step counter).
    straight, _ = run(SPEC, [member(0, target=20)], [0], 1, digits, 20)
    chex.assert_trees_all_close(
        jax.tree.map(lambda a: a[0], pop.params), jax.tree.map(lambda a: a[0], straight.params),
        rtol=1e-6, atol=1e-6,
    )


def test_masked_latent_and_width_equal_an_unpadded_model(digits):
    padded = P.TrainSpec(ModelSpec("ae", 64, hidden=48, latent_dim=16, depth=2), "adam", 32)
    small = P.TrainSpec(ModelSpec("ae", 64, hidden=20, latent_dim=8, depth=2), "adam", 32)
    m = member(4, spec=padded, latent_dim=8, hidden=20, learning_rate=3e-3)
    pop = placement.assign(padded, placement.create(padded, 3), [1], [m])
    small_pop = placement.assign(small, placement.create(small, 1), [0], [m])
    # Same key, same initial weights: the used block of the padded slot is the small model, and
    # nothing lives outside it.
    for name in pop.params:
        kernel = np.asarray(kernel_matrix(padded.model, pop.params, name)[1])  # [in, out]
        want = np.asarray(kernel_matrix(small.model, small_pop.params, name)[0])
        used = kernel[: want.shape[0], : want.shape[1]]
        np.testing.assert_array_equal(used, want)
        assert np.abs(kernel).sum() == pytest.approx(np.abs(used).sum(), rel=1e-6)
    pop, losses = P.train_chunk(padded, pop, digits, 40)
    small_pop, small_losses = P.train_chunk(small, small_pop, digits, 40)
    np.testing.assert_allclose(np.asarray(losses)[1], np.asarray(small_losses)[0], rtol=2e-5)
    np.testing.assert_allclose(
        np.asarray(P.evaluate(padded, pop, digits)["val_loss"])[1],
        np.asarray(P.evaluate(small, small_pop, digits)["val_loss"])[0], rtol=2e-5,
    )


@pytest.mark.parametrize("precision", ["tf32", "bfloat16"])
def test_matmul_precision_keeps_float32_parameters(digits, precision):
    spec = P.TrainSpec(ModelSpec("ae", 64, hidden=32, latent_dim=8, precision=precision),
                       "adam", 32)
    members = [member(t, spec=spec, learning_rate=3e-3) for t in range(2)]
    pop, losses = run(spec, members, [0, 1], 2, digits, 40)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(pop.params))
    _, reference = run(SPEC, [member(t, learning_rate=3e-3) for t in range(2)], [0, 1], 2,
                       digits, 40)
    if precision == "tf32" and jax.devices()[0].platform == "cpu":
        np.testing.assert_allclose(losses, reference, rtol=1e-5)  # CPU has no TF32
    else:  # bfloat16 matmuls: the same training, within bfloat16's ~3 significant digits
        np.testing.assert_allclose(losses, reference, rtol=0.05)
        assert not np.allclose(losses, reference, rtol=1e-6)
    assert losses[:, -5:].mean() < losses[:, :5].mean()


def test_population_larger_than_the_memory_budget_is_trained_in_groups(digits, monkeypatch):
    spec = P.TrainSpec(ModelSpec("ae", 64, hidden=32, latent_dim=8), "adam", 24)  # own program
    members = [member(t, spec=spec, learning_rate=1e-3 * (t + 1)) for t in range(6)]
    _, whole = run(spec, members, list(range(6)), 6, digits, 20)
    assert grouping.group_size(spec, 6) == 6
    monkeypatch.setenv("JAXAE_MEMORY_BUDGET", str(2 * grouping.activation_bytes(spec)))
    assert grouping.group_size(spec, 6) == 2
    jax.clear_caches()  # the group size is fixed when the program is traced
    _, grouped = run(spec, members, list(range(6)), 6, digits, 20)
    np.testing.assert_allclose(grouped, whole, rtol=1e-5)
    monkeypatch.setenv("JAXAE_MEMORY_BUDGET", "1")  # nothing fits: one member at a time
    assert grouping.group_size(spec, 6) == 1


def test_a_population_that_never_clips_skips_the_norm_and_changes_no_number(digits):
    """``clip_gradients=False`` drops the gradient-norm pass: with ``grad_clip = 0`` (off) every
    loss and parameter is bit-equal to the clipping program's, and a blow-up still freezes only
    its slot."""
    no_clip = P.TrainSpec(SPEC.model, SPEC.optimizer, SPEC.batch_size, clip_gradients=False)
    blowup = member(2)
    members = [member(t, learning_rate=1e-3 * (t + 1)) for t in range(2)]
    members.append(placement.Member(2, {**blowup.config, "learning_rate": 1e30}, 40, blowup.keys))
    results = [run(spec, members, [0, 1, 2], 3, digits, 40) for spec in (SPEC, no_clip)]
    (pop_a, losses_a), (pop_b, losses_b) = results
    np.testing.assert_array_equal(losses_a[:2], losses_b[:2])
    chex.assert_trees_all_equal(jax.tree.map(lambda a: a[:2], pop_a.params),
                                jax.tree.map(lambda a: a[:2], pop_b.params))
    assert np.asarray(pop_b.diverged).tolist() == [False, False, True]
    assert np.isfinite(losses_b[:2]).all()


def regularised(norm, hidden=32, latent_dim=8):
    # gelu, not relu: a batch-normalised pre-activation can land within rounding of relu's kink
    # (seen: 1e-7), where jit and eager, or padded and unpadded matmuls, disagree on its
    # derivative and the runs part ways by 1e-3 within ten steps.
    model = ModelSpec("ae", 64, hidden=hidden, latent_dim=latent_dim, depth=2, norm=norm,
                      dropout=True, activation="gelu")
    return P.TrainSpec(model, "adam", 32)


REGULARISED = {"hidden": 20, "latent_dim": 6, "learning_rate": 5e-3, "dropout": 0.2,
               "schedule": "cosine", "warmup": 3, "final_lr_ratio": 0.1}


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_norm_dropout_and_schedule_keep_population_and_padding_invariance(norm, digits):
    """The same trial alone, in slot 2 of 4 among others, and in an unpadded program of its own
    width gives the same losses, validation loss and batch statistics."""
    padded, small = regularised(norm), regularised(norm, hidden=20, latent_dim=6)
    config = hparams.resolve("ae", REGULARISED)
    trial = placement.Member(9, config, 20, P.trial_keys(0, 9), horizon=30)
    others = [member(t, spec=padded, dropout=0.5, learning_rate=1e-2) for t in range(3)]
    crowd_pop, crowd = run(padded, [others[0], others[1], trial, others[2]], [0, 1, 2, 3], 4,
                           digits, 20)
    alone_pop, alone = run(padded, [trial], [0], 1, digits, 20)
    small_pop, unpadded = run(small, [trial], [0], 1, digits, 20)
    np.testing.assert_allclose(crowd[2], alone[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(unpadded[0], alone[0], rtol=2e-5)
    vals = [np.asarray(P.evaluate(s, p, digits)["val_loss"])[i]
            for s, p, i in ((padded, crowd_pop, 2), (padded, alone_pop, 0), (small, small_pop, 0))]
    np.testing.assert_allclose(vals, vals[0], rtol=2e-5)
    if norm == "batch":
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[2, :20], crowd_pop.stats),
                                    jax.tree.map(lambda a: a[0, :20], alone_pop.stats),
                                    jax.tree.map(lambda a: a[0], small_pop.stats),
                                    rtol=2e-5, atol=1e-6)
    # Dropout and the schedule did something: without them the trial trains differently.
    plain = placement.Member(9, hparams.resolve("ae", {**REGULARISED, "dropout": 0.0}), 20,
                             P.trial_keys(0, 9), horizon=30)
    _, without = run(padded, [plain], [0], 1, digits, 20)
    assert not np.allclose(without[0], alone[0], rtol=1e-3)


def test_batch_statistics_move_only_while_a_slot_trains_and_serve_evaluation(digits):
    spec = regularised("batch")
    members = [member(0, spec=spec, target=5), member(1, spec=spec, target=0)]
    pop = placement.assign(spec, placement.create(spec, 2), [0, 1], members)
    initial = jax.tree.map(np.asarray, pop.stats)
    pop, _ = P.train_chunk(spec, pop, digits, 8)
    stats = jax.tree.map(np.asarray, pop.stats)
    # Slot 1 never trained: its statistics are the initial ones (mean 0, variance 1).
    chex.assert_trees_all_equal(jax.tree.map(lambda a: a[1], stats),
                                jax.tree.map(lambda a: a[1], initial))
    assert not np.allclose(stats["enc_0_norm"]["mean"][0], 0.0)
    # Evaluation normalises with the running statistics, not the validation batch's own.
    from jaxae.objectives import make_metrics

    m = jax.tree.map(lambda a: np.asarray(a)[0], pop)  # slot 0, on the host
    metrics = make_metrics(spec.model)
    got = float(np.asarray(P.evaluate(spec, pop, digits)["val_loss"])[0])
    with_running = metrics(m.params, digits, m.eval_key, m.hparams.model, m.stats)["val_loss"]
    with_running = with_running.mean()
    fresh = jax.tree.map(lambda a: a[1], initial)
    with_initial = metrics(m.params, digits, m.eval_key, m.hparams.model, fresh)["val_loss"]
    with_initial = with_initial.mean()
    assert got == pytest.approx(float(with_running), rel=1e-5)
    assert got != pytest.approx(float(with_initial), rel=1e-3)


def test_new_schedules_and_dropout_rates_do_not_recompile(digits):
    spec = regularised("layer")
    pop = placement.assign(spec, placement.create(spec, 2), [0, 1],
                           [member(t, spec=spec) for t in range(2)])
    pop, _ = P.train_chunk(spec, pop, digits, 5)
    P.evaluate(spec, pop, digits)
    before = dict(P.TRACES)
    for i, kind in enumerate(hparams.SCHEDULES):
        news = [member(10 + i, spec=spec, schedule=kind, warmup=i, final_lr_ratio=0.5,
                       dropout=0.1 * i)]
        pop = placement.assign(spec, pop, [i % 2], news)
        pop, _ = P.train_chunk(spec, pop, digits, 5)
        P.evaluate(spec, pop, digits)
    assert dict(P.TRACES) == before


def test_a_checkpoint_holds_hyperparameters_by_name_and_loads_back():
    """checkpoint.FORMAT 2 keeps ``hparams`` as name -> [slots]: the form of checkpoints written
    before the per-slot structure was grouped, which must still load."""
    from flax import serialization

    pop = jax.device_get(placement.assign(SPEC, placement.create(SPEC, 2), [1],
                                          [member(3, learning_rate=0.02, schedule="cosine")]))
    state = serialization.to_state_dict(pop)
    assert set(state["hparams"]) == set(hparams.ARRAY_NAMES) | {"horizon"}
    assert state["hparams"]["learning_rate"].tolist() == [np.float32(1e-3), np.float32(0.02)]
    data = serialization.msgpack_serialize(state)
    back = serialization.from_state_dict(jax.device_get(placement.create(SPEC, 2)),
                                         serialization.msgpack_restore(data))
    chex.assert_trees_all_equal(back, pop)
    assert isinstance(back.hparams, hparams.SlotHParams)
