"""Grain pipeline: window index, per-process shares, normalisation, state, workers, mixing, global arrays."""

import json
import math
import warnings

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from brainjax.data.atlas_core import Atlas
from brainjax.data.dataset import DatasetError, ScanMeta, finalize, write_part
from brainjax.data.pipeline import LoaderSpec, eval_batches, make_loader, to_global

WINDOW, STRIDE = 16, 8


def build_dataset(path, n_parcels, lengths, seed, fractions=(0.6, 0.2, 0.2), tr=2.0):
    """One scan per length (two scans per subject), each parcel with its own offset and scale."""
    rng = np.random.default_rng(seed)
    offset = rng.normal(0, 50, n_parcels)[:, None]
    scale = rng.uniform(0.5, 5, n_parcels)[:, None]
    raw = {}
    items = []
    for i, length in enumerate(lengths):
        data = (offset + scale * rng.standard_normal((n_parcels, length))).astype(np.float32)
        scan_id = f"scan{i:03d}"
        raw[scan_id] = data
        items.append((ScanMeta(scan_id, f"sub{i // 2:02d}", tr), data))
    write_part(path, "part", items, scans_per_shard=7)
    atlas = Atlas(f"rand{n_parcels}", "coordinates", tuple(f"p{i}" for i in range(n_parcels)),
                  rng.uniform(-70, 70, (n_parcels, 3)))
    return finalize(path, atlas, fractions, seed=seed), raw


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    lengths = [int(n) for n in np.random.default_rng(10).integers(10, 60, 24)]  # 2 train scans < WINDOW
    ds, raw = build_dataset(root / "a", 5, lengths, seed=1)
    ds_b, raw_b = build_dataset(root / "b", 8, [40] * 12, seed=2, tr=0.8)
    return {"a": ds, "raw": raw, "b": ds_b, "raw_b": raw_b, "root": root}


def spec(paths, **kw):
    base = dict(split="train", window=WINDOW, batch_size=4, stride=STRIDE, process_index=0, process_count=1,
                read_threads=2)
    base.update(kw)
    return LoaderSpec(paths=tuple(str(p) for p in paths), **base)


def take(loader, n):
    return [next(loader) for _ in range(n)]


def windows_of(batches):
    return [(int(d), int(s), int(t)) for b in batches for d, s, t in zip(b["dataset"], b["scan"], b["start"])]


def all_stride_windows(ds, split, window, stride):
    """Every (0, row, start) window of a split, computed directly from the manifest."""
    return {(0, i, s) for i in ds.indices(split)
            for s in range(0, ds.manifest[i]["length"] - window + 1, stride)}


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


@pytest.mark.parametrize("count,host_batch", [(2, 1), (2, 3), (3, 2)])
def test_process_shares_rebuild_the_one_process_batches(data, count, host_batch):
    ds = data["a"]
    expected = all_stride_windows(ds, "train", WINDOW, STRIDE)
    n = len(expected)
    batch = count * host_batch
    assert n % batch  # the data are chosen so that global batches straddle epoch boundaries
    single = windows_of(list(quiet(make_loader, spec([ds.path], batch_size=batch, num_epochs=2))))
    shares = [[windows_of([b]) for b in quiet(make_loader, spec([ds.path], batch_size=batch, process_index=p,
                                                                  process_count=count, num_epochs=2))]
              for p in range(count)]
    assert len({len(share) for share in shares}) == 1  # processes stay in lockstep
    # global batch k = process 0's host batch k, then process 1's, ...: the one-process run's batch k
    assembled = [w for k in range(len(shares[0])) for p in range(count) for w in shares[p][k]]
    assert assembled == single
    assert len(assembled) == 2 * n // batch * batch
    # so every window of the first epoch is read exactly once across the processes
    assert sorted(assembled[:n]) == sorted(expected)


def test_state_resumes_on_another_process_count(data):
    """Host batch k of every process is global batch k, so a 2-process position continues on one process."""
    ds = data["a"]
    two = [quiet(make_loader, spec([ds.path], batch_size=4, process_index=p, process_count=2)) for p in range(2)]
    for loader in two:
        take(loader, 3)
    state = json.loads(json.dumps(two[0].get_state()))
    with quiet(make_loader, spec([ds.path], batch_size=4)) as one, \
            quiet(make_loader, spec([ds.path], batch_size=4)) as reference:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "different setup" warning: the order is the same
            one.set_state(state)
        take(reference, 3)
        assert windows_of(take(one, 4)) == windows_of(take(reference, 4))
    for loader in two:
        loader.close()


def test_random_crops_one_per_scan_per_epoch(data):
    ds = data["a"]
    eligible = {i for i in ds.indices("train") if ds.manifest[i]["length"] >= WINDOW}
    per_epoch = len(eligible)
    loader = quiet(make_loader, spec([ds.path], stride=0, batch_size=1, num_epochs=3, seed=5))
    got = windows_of(list(loader))
    assert len(got) == 3 * per_epoch
    epochs = [got[e * per_epoch:(e + 1) * per_epoch] for e in range(3)]
    for epoch in epochs:
        assert sorted(s for _, s, _ in epoch) == sorted(eligible)
        for _, scan, start in epoch:
            assert 0 <= start <= ds.manifest[scan]["length"] - WINDOW
    starts = [dict((s, t) for _, s, t in epoch) for epoch in epochs]
    assert starts[0] != starts[1] and starts[1] != starts[2]  # new crops every epoch
    again = quiet(make_loader, spec([ds.path], stride=0, batch_size=1, num_epochs=3, seed=5))
    again = windows_of(list(again))
    assert again == got


def test_short_scans_are_counted_and_reported(data):
    ds = data["a"]
    short = sum(ds.manifest[i]["length"] < WINDOW for i in ds.indices("train"))
    assert short > 0
    with pytest.warns(UserWarning, match=f"{short} of .* shorter than the {WINDOW}-TR window"):
        loader = make_loader(spec([ds.path]))
    assert loader.skipped_scans == [short]


def test_windows_equal_normalised_numpy_slices(data):
    ds, raw = data["a"], data["raw"]
    train = np.concatenate([raw[r["scan_id"]] for r in ds.manifest if r["split"] == "train"], axis=1)
    q25, median, q75 = np.percentile(train.astype(np.float64), [25, 50, 75], axis=1)
    iqr = q75 - q25
    loader = quiet(make_loader, spec([ds.path], max_parcels=7))
    for batch in take(loader, 3):
        assert batch["signal"].dtype == np.float32 and batch["signal"].shape == (4, 7, WINDOW)
        for b in range(4):
            row = ds.manifest[batch["scan"][b]]
            start = batch["start"][b]
            expected = (raw[row["scan_id"]][:, start:start + WINDOW] - median[:, None]) / iqr[:, None]
            np.testing.assert_allclose(batch["signal"][b, :5], expected, rtol=1e-4, atol=1e-4)
            assert not batch["signal"][b, 5:].any()
            assert batch["tr"][b] == np.float32(row["tr"])
        np.testing.assert_array_equal(batch["parcel_mask"], np.tile(np.arange(7) < 5, (4, 1)))
        np.testing.assert_allclose(batch["coords"][:, :5], np.broadcast_to(ds.atlas.xyz, (4, 5, 3)))


def test_seed_determinism_and_order(data):
    path = data["a"].path
    first = windows_of(take(quiet(make_loader, spec([path], seed=3)), 6))
    same = windows_of(take(quiet(make_loader, spec([path], seed=3)), 6))
    other = windows_of(take(quiet(make_loader, spec([path], seed=4)), 6))
    assert first == same
    assert first != other
    n = len(all_stride_windows(data["a"], "train", WINDOW, STRIDE))
    epoch_a = windows_of(list(quiet(make_loader, spec([path], seed=3, batch_size=1, num_epochs=1))))
    epoch_b = windows_of(list(quiet(make_loader, spec([path], seed=4, batch_size=1, num_epochs=1))))
    assert len(epoch_a) == n and set(epoch_a) == set(epoch_b) and epoch_a != epoch_b


def test_no_shuffle_keeps_canonical_order(data):
    ds = data["a"]
    got = windows_of(list(quiet(make_loader, spec([ds.path], shuffle=False, batch_size=1, num_epochs=1))))
    assert got == sorted(all_stride_windows(ds, "train", WINDOW, STRIDE))


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_state_restore_is_exact(data, workers):
    path = data["a"].path
    per_epoch = len(all_stride_windows(data["a"], "train", WINDOW, STRIDE))
    batches_per_epoch = per_epoch / 4
    cut_mid, cut_boundary = 2, math.floor(batches_per_epoch)  # batch after cut_boundary spans two epochs
    reference = windows_of(take(quiet(make_loader, spec([path], seed=9)), cut_boundary + 4))
    # worker start-up costs seconds on a small machine: with workers, check the harder (boundary) cut only
    for cut in (cut_mid, cut_boundary) if workers == 0 else (cut_boundary,):
        loader = quiet(make_loader, spec([path], seed=9, workers=workers))
        take(loader, cut)
        state = json.loads(json.dumps(loader.get_state()))
        loader.close()
        resumed = quiet(make_loader, spec([path], seed=9, workers=workers))
        resumed.set_state(state)
        assert windows_of(take(resumed, 3)) == reference[4 * cut:4 * (cut + 3)]
        resumed.close()


@pytest.mark.slow
def test_workers_give_the_same_batches(data):
    path = data["a"].path
    plain = take(quiet(make_loader, spec([path], seed=2)), 5)
    with quiet(make_loader, spec([path], seed=2, workers=2)) as loader:
        parallel = take(loader, 5)
    for a, b in zip(plain, parallel):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_mixing_pads_parcels_and_follows_weights(data):
    ds_a, ds_b = data["a"], data["b"]
    loader = quiet(make_loader, spec([ds_a.path, ds_b.path], max_parcels=10, weights=(0.75, 0.25),
                                     batch_size=8))
    batches = take(loader, 40)
    ids = np.concatenate([b["dataset"] for b in batches])
    assert abs(np.mean(ids == 0) - 0.75) < 0.03
    assert loader.n_parcels == 10
    for batch in batches[:5]:
        for b in range(8):
            p = 5 if batch["dataset"][b] == 0 else 8
            xyz = (ds_a if p == 5 else ds_b).atlas.xyz
            np.testing.assert_array_equal(batch["parcel_mask"][b], np.arange(10) < p)
            np.testing.assert_allclose(batch["coords"][b, :p], xyz)
            assert not batch["coords"][b, p:].any() and not batch["signal"][b, p:].any()
            assert batch["signal"][b, :p].std() > 0.1
            assert batch["tr"][b] == (2.0 if p == 5 else np.float32(0.8))


def test_eval_batches_cover_every_window_once(data):
    ds = data["a"]
    expected = all_stride_windows(ds, "val", WINDOW, WINDOW)
    shares = [list(quiet(eval_batches, [ds.path], "val", WINDOW, 4, process_index=p, process_count=2))
              for p in range(2)]
    assert len(shares[0]) == len(shares[1]) == math.ceil(len(expected) / 4)
    valid = [w for share in shares for b in share
             for w, v in zip(windows_of([b]), b["valid"]) if v]
    assert sorted(valid) == sorted(expected)
    # global batch j = process 0's rows then process 1's rows: windows in canonical order
    ordered = [w for j in range(len(shares[0])) for p in range(2) for w in windows_of([shares[p][j]])]
    assert ordered[:len(expected)] == sorted(expected)


def test_infinite_epochs_reshuffle(data):
    path = data["a"].path
    n = len(all_stride_windows(data["a"], "train", WINDOW, STRIDE))
    loader = quiet(make_loader, spec([path], batch_size=1))
    got = windows_of(take(loader, 2 * n))
    assert set(got[:n]) == set(got[n:]) and got[:n] != got[n:]


def test_to_global_shards_over_mesh():
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    rng = np.random.default_rng(0)
    batch = {"signal": rng.standard_normal((16, 5, 12)).astype(np.float32),
             "scan": np.arange(16, dtype=np.int32),
             "parcel_mask": rng.random((16, 5)) > 0.5}
    out = to_global(batch, mesh)
    expected_sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    for key, value in batch.items():
        assert out[key].sharding.is_equivalent_to(expected_sharding, value.ndim)
        assert out[key].shape == value.shape and out[key].dtype == value.dtype
        np.testing.assert_array_equal(np.asarray(out[key]), value)
        for shard in out[key].addressable_shards:
            assert shard.data.shape[0] == 2
            np.testing.assert_array_equal(np.asarray(shard.data), value[shard.index])
    with pytest.raises(ValueError, match="not divisible"):
        to_global({"x": np.zeros((12, 3))}, mesh)
    with pytest.raises(ValueError, match="not axes of the mesh"):
        to_global(batch, mesh, axes=("batch",))


def test_errors(data, tmp_path):
    a, b = data["a"].path, data["b"].path
    with pytest.raises(DatasetError, match="not found"):
        make_loader(spec([tmp_path / "nope"]))
    for empty in ("", None):
        with pytest.raises(ValueError, match="empty dataset path"):
            make_loader(LoaderSpec(paths=(empty,), split="train", window=WINDOW, batch_size=4))
    train_only, _ = build_dataset(tmp_path / "train_only", 3, [30] * 4, seed=3, fractions=(1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=rf"{train_only.path}: split 'val' has no scans"):
        make_loader(spec([train_only.path], split="val"))
    with pytest.raises(ValueError, match="longer than every scan of split 'train'"):
        make_loader(spec([a], window=500))
    with pytest.raises(ValueError, match="needs max_parcels"):
        quiet(make_loader, spec([a, b]))
    with pytest.raises(ValueError, match="smaller than the 8 parcels"):
        make_loader(spec([a, b], max_parcels=6))
    with pytest.raises(ValueError, match="1 mixing weights for 2 datasets"):
        make_loader(spec([a, b], max_parcels=8, weights=(1.0,)))
    with pytest.raises(ValueError, match="multiple of the process count"):
        make_loader(spec([a], batch_size=5, process_index=0, process_count=2))
    with pytest.raises(ValueError, match="multiple of the process count"):
        eval_batches([a], "val", WINDOW, 3, process_index=1, process_count=2)
    loader = quiet(make_loader, spec([a]))
    with pytest.raises(ValueError, match="not a brainjax loader state"):
        loader.set_state({"next_index": 3})
