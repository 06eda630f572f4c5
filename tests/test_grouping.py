"""Tests for jaxae.grouping: the per-member byte estimates and the group a CPU trains at once."""

import jax
import pytest

from jaxae import grouping
from jaxae.models import ModelSpec, init_params, make_masks
from jaxae.population import TrainSpec


def spec_of(kind="ae", hidden=32, latent_dim=8, depth=1, batch_size=64):
    return TrainSpec(ModelSpec(kind, 64, hidden=hidden, latent_dim=latent_dim, depth=depth),
                     "adam", batch_size)


@pytest.fixture(autouse=True)
def no_budget_override(monkeypatch):
    monkeypatch.delenv("JAXAE_MEMORY_BUDGET", raising=False)


@pytest.mark.parametrize("kind,depth", [("ae", 1), ("ae", 3), ("vae", 2)])
def test_state_bytes_is_twelve_bytes_per_parameter_of_the_encoder_and_its_mirror(kind, depth):
    # Counted from the parameters models.init_params really creates: the estimate counts the
    # encoder (with a VAE's mean and log-variance codes) twice, for the decoder that mirrors it.
    spec = spec_of(kind, depth=depth)
    params = init_params(spec.model, jax.random.key(0), make_masks(spec.model, 32, 8))
    encoder = sum(leaf.size for name, layer in params.items()
                  if name.startswith(("enc_", "code")) for leaf in layer.values())
    assert grouping.state_bytes(spec) == 4 * 3 * 2 * encoder


def test_activation_bytes_grow_with_the_batch_and_the_width():
    small, wide, big_batch = spec_of(), spec_of(hidden=256), spec_of(batch_size=128)
    assert grouping.activation_bytes(wide) > grouping.activation_bytes(small)
    per_batch = grouping.activation_bytes(big_batch) - grouping.activation_bytes(small)
    assert per_batch == 64 * 4 * 4 * (64 + 32 + 8 + 32 + 64)  # 64 more examples' floats


@pytest.mark.parametrize("hidden,batch,slots,expected", [
    (4, 8, 16, 8),      # a tiny model: as many as CPU_GROUP
    (16, 64, 12, 4),    # small: what fits the cache budget
    (16, 64, 7, 1),     # 7 has no divisor within it but 1
    (128, 64, 32, 2),   # mid-sized: pairs
    (256, 64, 12, 2),
    (2048, 64, 6, 2),   # pairs even past the budget: they beat single members
    (2048, 64, 9, 1)])  # 9 has no divisor 2
def test_cpu_group_is_the_largest_divisor_within_the_cache_budget(hidden, batch, slots,
                                                                  expected):
    assert jax.devices()[0].platform == "cpu" and len(jax.devices()) == 1
    spec = spec_of(hidden=hidden, latent_dim=min(8, hidden), batch_size=batch)
    per_member = grouping.activation_bytes(spec)
    fits = [d for d in range(1, slots + 1) if slots % d == 0 and d <= grouping.CPU_GROUP
            and (d <= grouping.CPU_GROUP_MIN or d * per_member <= grouping.CPU_GROUP_BYTES)]
    assert grouping.group_size(spec, slots) == max(fits) == expected


def test_memory_budget_comes_from_the_environment_and_bounds_the_group(monkeypatch):
    assert grouping.memory_budget() is None  # a CPU device reports no memory limit
    spec = spec_of(hidden=16)
    monkeypatch.setenv("JAXAE_MEMORY_BUDGET", str(float(2 * grouping.activation_bytes(spec))))
    assert grouping.memory_budget() == 2 * grouping.activation_bytes(spec)
    assert grouping.group_size(spec, 12) == 2
    assert grouping.group_size(spec, 9) == 1  # 9 has no divisor 2: one slot at a time


class _Accelerator:
    platform = "gpu"

    def memory_stats(self):
        return {}


@pytest.mark.parametrize("hidden,batch,least,expected", [
    (64, 64, 16, 64),     # a launch-bound step: the whole bucket at once
    (2048, 128, 16, 16),  # compute-bound: the population's even share among the buckets
    (2048, 128, 24, 16),  # the largest divisor of 64 up to the share
    (2048, 128, None, 64)])  # no share given: every slot, as before
def test_an_accelerator_group_takes_what_a_launch_bound_step_holds_and_at_least_the_share(
        monkeypatch, hidden, batch, least, expected):
    monkeypatch.setattr(grouping.jax, "devices", lambda: [_Accelerator()])
    spec = spec_of(hidden=hidden, latent_dim=8, batch_size=batch)
    # Model FLOPs of a step of one member: 6 x batch x the matmuls' multiply-adds.
    flops = 6 * batch * 2 * (64 * hidden + hidden * 8)
    free = grouping.ACCELERATOR_GROUP_FLOPS // flops
    assert free >= 64 if hidden == 64 else free < 16  # the cases' premise
    assert grouping.group_size(spec, 64, least=least) == expected
