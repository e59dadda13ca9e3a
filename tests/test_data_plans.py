"""Epoch plans: sharding across ranks, determinism, and the statistics of the augmentation draws.
Plans are pure Python (no decoding), so these run on thousands of fake samples in milliseconds."""

import numpy as np
import pytest

from data.plans import EIGVAL, EIGVEC, MEAN_RGB, PIXEL_SCALE, train_plan, val_plan


def fake_samples(n: int, classes: int = 7) -> list[tuple[str, int]]:
    return [(f"img{i:05d}.JPEG", i % classes) for i in range(n)]


@pytest.mark.parametrize("total,batch", [(103, 4), (10, 2), (64, 8)])
def test_train_shards_are_disjoint_equal_whole_batches_and_reshuffled(total, batch):
    samples = fake_samples(total)
    step = batch * 2
    for epoch in range(3):
        shards = [train_plan(samples, batch, seed=7, epoch=epoch, rank=r, world_size=2) for r in range(2)]
        sizes = [len(s) for s in shards]
        assert sizes == [total // step * batch] * 2, f"[epoch {epoch}] shard sizes {sizes}, batch {batch}"
        seen = shards[0].paths + shards[1].paths
        assert len(set(seen)) == len(seen), f"[epoch {epoch}] a sample is in both shards"
        labels = dict(samples)
        for s in shards:
            assert [labels[p] for p in s.paths] == s.labels.tolist(), "labels follow their files"
    a = [train_plan(samples, batch, 7, epoch, 0, 2).paths for epoch in range(3)]
    assert a[0] != a[1] != a[2], "each epoch reshuffles"
    dropped = [set(dict(samples)) - set(train_plan(samples, batch, 7, e, 0, 2).paths)
               - set(train_plan(samples, batch, 7, e, 1, 2).paths) for e in range(3)]
    if total % step:
        assert len({frozenset(d) for d in dropped}) > 1, "the same remainder is dropped every epoch"


def test_two_ranks_step_through_the_single_rank_epoch_at_twice_the_batch():
    """Global step k on 2 ranks at batch b is step k of 1 rank at batch 2b, with the same augmentation:
    the draws belong to positions in the permutation, not to the world size."""
    samples = fake_samples(101)
    one = train_plan(samples, 8, seed=3, epoch=2)
    two = [train_plan(samples, 4, seed=3, epoch=2, rank=r, world_size=2) for r in range(2)]
    assert len(one) == 2 * len(two[0]) == 96
    for r in range(2):
        for field in ("crop_x", "crop_y", "mirror", "lighting"):
            np.testing.assert_array_equal(getattr(two[r], field), getattr(one, field)[r::2], err_msg=f"[rank {r} {field}]")
        assert two[r].paths == one.paths[r::2]


def test_train_plan_rejects_a_bad_rank_too_few_samples_and_a_negative_std():
    with pytest.raises(ValueError, match="rank 2 is not in 0..world_size-1"):
        train_plan(fake_samples(20), 2, 0, 0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="fewer than one batch of 6 on each of 2 ranks"):
        train_plan(fake_samples(11), 6, 0, 0, rank=0, world_size=2)
    with pytest.raises(ValueError, match="lighting_std must be >= 0, got -0.1"):
        train_plan(fake_samples(11), 2, 0, 0, lighting_std=-0.1)


@pytest.mark.parametrize("total,world", [(11, 2), (10, 3), (2, 3), (1000, 8)])
def test_val_shards_cover_every_sample_exactly_once(total, world):
    samples = fake_samples(total)
    shards = [val_plan(samples, rank=r, world_size=world) for r in range(world)]
    seen = sorted(p for s in shards for p in s.paths)
    assert seen == sorted(p for p, _ in samples), f"{total} samples over {world} ranks: not an exact cover"
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1, f"shard sizes {sizes}"
    assert sum(int(s.labels.sum()) for s in shards) == sum(label for _, label in samples)


def test_plans_are_deterministic_and_depend_on_the_seed():
    samples = fake_samples(50)
    a, b, c = (train_plan(samples, 5, seed, 4) for seed in (1, 1, 2))
    for field in ("crop_x", "crop_y", "mirror", "lighting"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"[{field}] same seed")
    assert a.paths == b.paths and a.paths != c.paths


def test_crops_cover_the_slack_and_flips_are_half():
    plan = train_plan(fake_samples(20000), 100, seed=0, epoch=0)
    for name in ("crop_x", "crop_y"):
        pos = getattr(plan, name)
        assert 0 <= pos.min() < 0.001 and 0.999 < pos.max() <= 1, f"[{name}] does not reach both edges"
        # uniform on [0, 1]: each tenth holds 10% +- 5 sigma (sigma = sqrt(0.1 * 0.9 / n) = 0.2%)
        counts = np.histogram(pos, bins=10, range=(0, 1))[0] / len(pos)
        assert np.all(abs(counts - 0.1) < 0.011), f"[{name}] tenths hold {counts}"
    # flips ~ Bernoulli(0.5): 5 sigma = 5 * sqrt(0.25 / 20000) = 1.8%
    assert abs(plan.mirror.mean() - 0.5) < 0.018, f"[mirror] {plan.mirror.mean():.3f} of the crops are flipped"
    assert set(np.unique(plan.mirror)) == {0, 1}


@pytest.mark.parametrize("std", [0.1, 0.3])
def test_lighting_noise_has_the_paper_covariance(std):
    """offset = 255 * EIGVEC @ (alpha * EIGVAL), alpha ~ N(0, std): its covariance is
    255^2 * EIGVEC diag(EIGVAL^2 std^2) EIGVEC^T, and its mean 0."""
    n = 40000
    plan = train_plan(fake_samples(n), 100, seed=1, epoch=0, lighting_std=std)
    offsets = plan.lighting.astype(np.float64)
    want = PIXEL_SCALE ** 2 * EIGVEC @ np.diag(EIGVAL ** 2 * std ** 2) @ EIGVEC.T
    got = np.cov(offsets, rowvar=False)
    # A sample covariance's entry (i, j) has standard error sqrt((S_ii S_jj + S_ij^2) / n); allow 5 of them
    # (up to ~3.5% of the largest variance here). A scale off by 255 or a transposed EIGVEC is far outside.
    tolerance = 5 * np.sqrt((np.outer(np.diag(want), np.diag(want)) + want ** 2) / n)
    assert np.all(abs(got - want) < tolerance), f"covariance\n{got}\nwant\n{want}"
    assert np.all(abs(offsets.mean(0)) < 5 * np.sqrt(np.diag(want) / n)), f"mean offset {offsets.mean(0)}"
    np.testing.assert_allclose(plan.mean, np.array(MEAN_RGB) - plan.lighting, rtol=0, atol=1e-4)


def test_lighting_std_zero_turns_it_off_and_leaves_the_other_draws_alone():
    samples = fake_samples(30)
    on, off = train_plan(samples, 5, 0, 0, lighting_std=0.1), train_plan(samples, 5, 0, 0, lighting_std=0)
    assert not off.lighting.any() and on.lighting.any()
    assert on.paths == off.paths and np.array_equal(on.crop_x, off.crop_x)


def test_val_plan_is_centred_unflipped_and_unlit():
    plan = val_plan(fake_samples(9))
    assert plan.paths == [p for p, _ in fake_samples(9)]
    assert np.all(plan.crop_x == 0.5) and np.all(plan.crop_y == 0.5) and not plan.mirror.any()
    assert not plan.lighting.any() and not plan.ten_crop and val_plan(fake_samples(9), ten_crop=True).ten_crop
