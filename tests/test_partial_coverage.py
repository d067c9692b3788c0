"""Partial coverage: a scan missing a few parcels (empty, NaN or constant) is kept with those parcels masked.

They are listed in the manifest (``missing_parcels``) and by ``brainjax info``, stored as finite zeros, never
visible to the encoder nor in a loss, left out of the normalisation statistics and FC features; a scan missing
more than ``--max-missing-parcels`` fails naming them, and ``--strict`` stops at any missing parcel.
"""

import json

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from flax import nnx
from test_prepare import AFFINE, OPTS, grid_spec, random_volume, write_series, write_volume

from brainjax.cli import main as cli_main
from brainjax.commands import info as info_cmd
from brainjax.config import MaskConfig, ModelConfig
from brainjax.data.atlas import AtlasSpec
from brainjax.data.atlas_core import Atlas
from brainjax.data.clean import ScanError
from brainjax.data.dataset import Dataset, ScanMeta, finalize, robust_stats, write_part
from brainjax.data.pipeline import eval_batches
from brainjax.data.prepare import OptionsMismatchError, PrepareOptions, prepare
from brainjax.eval.networks import group_fc
from brainjax.eval.probe import fc_features, probe
from brainjax.eval.readouts import mask_missing_pairs, pair_present, upper_triangle
from brainjax.models.brainlm import BrainLM, mae_loss

N_PARCELS = 20  # one missing parcel is 5 %: kept under the default --max-missing-parcels 0.05, two are not
NAMES = tuple(f"p{i}" for i in range(N_PARCELS))
SERIES_OPTS = PrepareOptions(atlas="test-series", confounds="none", min_length=30)
SPLIT_ALL_TRAIN = (1.0, 0.0, 0.0)


def series_spec():
    xyz = np.random.default_rng(0).uniform(-60, 60, (N_PARCELS, 3))
    atlas = Atlas("test-series", "coordinates", NAMES, xyz, ("a",) * 10 + ("b",) * 10)
    return AtlasSpec(atlas=atlas, label_image=None, label_values=None, radius=None, vertex_labels=None, mesh=None)


@pytest.fixture(scope="module")
def partial_inputs(tmp_path_factory):
    """Six series scans: sub-02 has NaNs in parcel 3, sub-03 a constant parcel 7, sub-04 NaNs in parcels 4 and 9."""
    d = tmp_path_factory.mktemp("partial") / "in"
    d.mkdir()
    for k in range(1, 7):
        series = np.random.default_rng(k).normal(size=(80, N_PARCELS))
        if k == 2:
            series[::7, 3] = np.nan
        if k == 3:
            series[:, 7] = 4.0
        if k == 4:
            series[5, 4] = np.inf
            series[:, 9] = np.nan
        write_series(d / f"sub-0{k}_task-rest_bold.npy", series)
    return d


@pytest.fixture(scope="module")
def partial_dataset(partial_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("partial") / "ds"
    result = prepare([partial_inputs], out, SERIES_OPTS, spec=series_spec(), split_fractions=SPLIT_ALL_TRAIN)
    return out, result


def test_scan_with_one_missing_parcel_is_kept_listed_and_finite(partial_dataset):
    out, result = partial_dataset
    ds = Dataset(out)
    missing = {row["scan_id"][:6]: row["missing_parcels"] for row in ds.manifest}
    assert missing == {"sub-01": (), "sub-02": (3,), "sub-03": (7,), "sub-05": (), "sub-06": ()}
    assert [p["scan_id"][:6] for p in result.partial] == ["sub-02", "sub-03"]
    for i, row in enumerate(ds.manifest):
        data = ds.read(i)
        assert np.isfinite(data).all()
        np.testing.assert_array_equal(data[list(row["missing_parcels"])], 0.0)  # stored as 0
        assert np.all(data[ds.present(i)].std(axis=1) > 0.5)  # the others z-scored as before
    header, *lines = (out / "manifest.tsv").read_text().splitlines()
    column = header.split("\t").index("missing_parcels")
    assert [line.split("\t")[column] for line in lines] == ["", "3", "7", "", ""]
    status = json.loads((out / "staging" / "sub-02_task-rest.json").read_text())
    assert status["status"] == "ok" and status["missing_parcels"] == [3]
    assert "NaN/Inf values in the parcel means (12 of 80), inside 1 parcels: p3" in status["missing_reason"]
    assert json.loads((out / "prepare.json").read_text())["max_missing_parcels"] == 0.05


def test_too_many_missing_parcels_fail_naming_file_and_parcels(partial_dataset):
    out, result = partial_dataset
    (failure,) = result.failures
    assert failure["file"].endswith("sub-04_task-rest_bold.npy")
    assert failure["reason"] == ("NaN/Inf values in the parcel means (81 of 160), inside 2 parcels: p4, p9 "
                                 "(2 of 20 parcels missing; --max-missing-parcels 0.05 allows 1)")
    assert [f["reason"] for f in Dataset(out).failures] == [failure["reason"]]


def test_info_lists_missing_parcels(partial_dataset):
    out, _ = partial_dataset
    text = info_cmd.summary(out)
    assert ("missing parcels: 2 of 5 scans miss some (masked for those scans; at most 1 of 20); most often: "
            "p3 (1), p7 (1)") in text
    assert "  sub-02_task-rest: 1 missing: p3 (indices 3)" in text
    assert "  sub-03_task-rest: 1 missing: p7 (indices 7)" in text
    assert "max_missing_parcels=0.05" in text


def test_statistics_use_only_scans_where_the_parcel_is_present(partial_dataset):
    out, _ = partial_dataset
    ds = Dataset(out)
    assert all(row["split"] == "train" for row in ds.manifest)
    for p in range(N_PARCELS):
        values = np.concatenate([ds.read(i)[p] for i in range(len(ds)) if p not in ds.manifest[i]["missing_parcels"]])
        q25, median, q75 = np.percentile(values, [25, 50, 75])
        np.testing.assert_allclose(ds.median[p], median, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(ds.iqr[p], q75 - q25, rtol=1e-6, atol=1e-7)
    with np.load(out / "stats.npz") as stats:
        expected = np.full(N_PARCELS, 5)
        expected[[3, 7]] = 4
        np.testing.assert_array_equal(stats["n_present"], expected)


def test_robust_stats_ignore_values_of_missing_parcels():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(4, 30)) for _ in range(3)]
    present = [np.ones(4, bool), np.array([True, False, True, True]), np.array([True, False, True, True])]
    poisoned = [a.copy() for a in arrays]
    poisoned[1][1], poisoned[2][1] = 1e9, -1e9
    median, iqr, _ = robust_stats(poisoned, present)
    np.testing.assert_allclose(median[1], np.median(arrays[0][1]), rtol=1e-6)
    q = np.percentile(np.concatenate([a[0] for a in arrays]), [25, 50, 75])
    np.testing.assert_allclose([median[0], iqr[0]], [q[1], q[2] - q[0]], rtol=1e-5)
    # a parcel missing from every scan: median 0, IQR 1 (never used)
    median, iqr, _ = robust_stats(arrays, [np.array([True, False, True, True])] * 3)
    assert (median[1], iqr[1]) == (0.0, 1.0)


def test_strict_stops_at_any_missing_parcel_and_threshold_zero_rejects(partial_inputs, tmp_path):
    spec = series_spec()
    with pytest.raises(ScanError, match=r"sub-02_task-rest_bold.npy: NaN/Inf values .*p3 \(--strict: a scan with "
                                        r"any missing parcel stops the run"):
        prepare([partial_inputs], tmp_path / "strict", SERIES_OPTS, strict=True, spec=spec)
    # the scan stays staged as ok: a run without --strict keeps it, a --strict re-run stops again
    prepare([partial_inputs], tmp_path / "strict", SERIES_OPTS, spec=spec)
    assert Dataset(tmp_path / "strict").manifest[1]["missing_parcels"] == (3,)
    with pytest.raises(ScanError, match="sub-02_task-rest_bold.npy"):
        prepare([partial_inputs], tmp_path / "strict", SERIES_OPTS, strict=True, spec=spec)
    zero = PrepareOptions(atlas="test-series", confounds="none", min_length=30, max_missing_parcels=0.0)
    result = prepare([partial_inputs], tmp_path / "zero", zero, spec=spec)
    assert sorted(f["scan_id"][:6] for f in result.failures) == ["sub-02", "sub-03", "sub-04"]
    assert all(not row["missing_parcels"] for row in Dataset(tmp_path / "zero").manifest)
    with pytest.raises(OptionsMismatchError, match="max_missing_parcels: 0.0 before, 0.05 now"):
        prepare([partial_inputs], tmp_path / "zero", SERIES_OPTS, spec=spec)
    with pytest.raises(ValueError, match="fraction"):
        PrepareOptions(max_missing_parcels=1.5)


def test_old_prepare_json_means_no_missing_parcels_allowed(partial_inputs, tmp_path):
    spec, out = series_spec(), tmp_path / "old"
    zero = PrepareOptions(atlas="test-series", confounds="none", min_length=30, max_missing_parcels=0.0)
    prepare([partial_inputs], out, zero, spec=spec)
    record = json.loads((out / "prepare.json").read_text())
    del record["max_missing_parcels"]  # as written before the option existed
    (out / "prepare.json").write_text(json.dumps(record))
    assert prepare([partial_inputs], out, zero, spec=spec).skipped == 6
    with pytest.raises(OptionsMismatchError, match="predates --max-missing-parcels"):
        prepare([partial_inputs], out, SERIES_OPTS, spec=spec)


def test_volumes_empty_nan_and_constant_parcels(tmp_path):
    """Volume inputs: a parcel outside the brain mask (empty), one with a NaN voxel, one constant."""
    d = tmp_path / "in"
    d.mkdir()
    masked = random_volume(1)
    write_volume(d / "sub-01_task-rest_desc-preproc_bold.nii.gz", masked)
    mask = np.ones((6, 6, 4), np.uint8)
    mask[3:, :3] = 0  # parcel "b" lies outside the brain mask
    nib.save(nib.Nifti1Image(mask, AFFINE), d / "sub-01_task-rest_desc-brain_mask.nii.gz")
    nan = random_volume(2)
    nan[0, 4, 1, 7] = np.nan  # parcel "c"
    write_volume(d / "sub-02_task-rest_bold.nii.gz", nan)
    flat = random_volume(3)
    flat[3:, 3:] = 7.0  # parcel "d"
    write_volume(d / "sub-03_task-rest_bold.nii.gz", flat)
    two = random_volume(4)
    two[3:, 3:] = 7.0
    two[0, 0, 0, 3] = np.nan  # parcel "a" too: 2 of 4 > 25 %
    write_volume(d / "sub-04_task-rest_bold.nii.gz", two)
    write_volume(d / "sub-05_task-rest_bold.nii.gz", random_volume(5))
    options = PrepareOptions(atlas="test-grid", clean=OPTS.clean, confounds="none", min_length=30,
                             max_missing_parcels=0.25)
    result = prepare([d], tmp_path / "ds", options, spec=grid_spec())
    ds = Dataset(tmp_path / "ds")
    assert {r["scan_id"][:6]: r["missing_parcels"] for r in ds.manifest} == {
        "sub-01": (1,), "sub-02": (2,), "sub-03": (3,), "sub-05": ()}
    reasons = {p["scan_id"][:6]: p["reason"] for p in result.partial}
    assert reasons == {"sub-01": "1 parcels have no voxels/vertices inside the data: b",
                       "sub-02": "NaN/Inf values in 1 voxels (1 values), inside 1 parcels: c",
                       "sub-03": "zero-variance parcels (1; constant over time, e.g. outside the brain mask): d"}
    (failure,) = result.failures
    assert failure["reason"] == ("NaN/Inf values in 1 voxels (1 values), inside 1 parcels: a; zero-variance "
                                 "parcels (1; constant over time, e.g. outside the brain mask): d (2 of 4 parcels "
                                 "missing; --max-missing-parcels 0.25 allows 1)")
    for i in range(len(ds)):
        assert np.isfinite(ds.read(i)).all()


def test_empty_sphere_keeps_the_other_spheres(tmp_path):
    """A coordinate atlas with a sphere outside the image: the other spheres are still extracted."""
    xyz = np.array([[2.0, 2.0, 2.0], [8.0, 2.0, 2.0], [2.0, 8.0, 4.0], [8.0, 8.0, 4.0], [400.0, 400.0, 400.0]])
    atlas = Atlas("spheres", "coordinates", tuple("abcde"), xyz, ("n",) * 5)
    spec = AtlasSpec(atlas=atlas, label_image=None, label_values=None, radius=3.0, vertex_labels=None, mesh=None)
    (tmp_path / "in").mkdir()
    vol = random_volume(1)
    write_volume(tmp_path / "in" / "sub-01_task-rest_bold.nii.gz", vol)
    options = PrepareOptions(atlas="spheres", clean=OPTS.clean, confounds="none", min_length=30,
                             max_missing_parcels=0.2)
    result = prepare([tmp_path / "in"], tmp_path / "ds", options, spec=spec)
    assert result.partial[0]["reason"] == "1 parcels have no voxels/vertices inside the data: e"
    ds = Dataset(tmp_path / "ds")
    data = ds.read(0)
    assert ds.manifest[0]["missing_parcels"] == (4,)
    np.testing.assert_array_equal(data[4], 0.0)
    assert np.all(data[:4].std(axis=1) > 0)  # real means for the spheres inside the image
    np.testing.assert_allclose(data[0].mean(), vol[:3, :3, :3].mean(), atol=0.5)


# ---------------------------------------------------------------------------------------------- batches and loss

def _written_dataset(tmp_path, missing):
    """Three train scans (5 parcels, 40 TRs) written directly; ``missing`` maps scan index -> parcels."""
    rng = np.random.default_rng(3)
    atlas = Atlas("five", "coordinates", tuple("abcde"), rng.uniform(-50, 50, (5, 3)), ("n",) * 5)
    arrays = [rng.normal(size=(5, 40)).astype(np.float32) for _ in range(3)]
    for k, parcels in missing.items():
        arrays[k][list(parcels)] = 0.0
    items = [(ScanMeta(f"s{k}", f"sub{k}", 2.0, missing_parcels=tuple(missing.get(k, ()))), a)
             for k, a in enumerate(arrays)]
    write_part(tmp_path, "part-0-of-1", items)
    finalize(tmp_path, atlas, SPLIT_ALL_TRAIN)
    return Dataset(tmp_path)


def test_batches_mask_missing_parcels_and_the_loss_never_sees_them(tmp_path):
    ds = _written_dataset(tmp_path, {1: (2,)})
    (batch,) = list(eval_batches([str(tmp_path)], "train", 20, 6, process_index=0, process_count=1))
    scan1 = batch["scan"] == 1
    assert not batch["parcel_mask"][scan1][:, 2].any() and batch["parcel_mask"][~scan1].all()
    assert batch["parcel_mask"][scan1][:, [0, 1, 3, 4]].all()
    np.testing.assert_array_equal(batch["signal"][scan1][:, 2], 0.0)
    for row in np.flatnonzero(batch["valid"]):
        scan, start = int(batch["scan"][row]), int(batch["start"][row])
        expected = ds.normalize(ds.read(scan))[:, start:start + 20] * ds.present(scan)[:, None]
        np.testing.assert_allclose(batch["signal"][row], expected, rtol=1e-6)
    cfg = ModelConfig(patch=5, max_parcels=5, width=12, depth=1, heads=3, mlp=24, dec_width=8, dec_depth=1,
                      dec_heads=2, dec_mlp=16, fourier_features=3, attention="xla", neighbour_context=True)
    model = BrainLM(cfg, rngs=nnx.Rngs(0))
    inputs = {k: jnp.asarray(batch[k]) for k in ("signal", "parcel_mask", "coords", "tr")}
    rows = np.flatnonzero(scan1)

    mask_cfg = MaskConfig(strategy="mixture", ratio=0.4, future_patches=1)

    def loss(signal):
        return mae_loss(model, dict(inputs, signal=signal), jax.random.key(7), mask_cfg, deterministic=True)

    (value, sums), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(inputs["signal"])
    grad = np.asarray(grad)
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0
    np.testing.assert_array_equal(grad[rows, 2], 0.0)  # exactly zero: that parcel never reaches the loss
    poisoned = jax.jit(jax.vmap(lambda fill: loss(inputs["signal"].at[rows, 2].set(fill))))
    other, other_sums = poisoned(jnp.asarray([0.0, np.nan, 1e6, -3.0]))  # 0.0: the batch's own values
    for total in [other, *other_sums.values()]:
        np.testing.assert_array_equal(np.asarray(total), np.asarray(total)[0])  # bit-identical
    np.testing.assert_allclose(float(other[0]), float(value), rtol=1e-6)  # (vmap may round differently)


def test_old_manifest_without_the_column_loads(tmp_path):
    ds = _written_dataset(tmp_path, {})
    lines = (tmp_path / "manifest.tsv").read_text().splitlines()
    column = lines[0].split("\t").index("missing_parcels")
    (tmp_path / "manifest.tsv").write_text(
        "".join("\t".join(c for j, c in enumerate(line.split("\t")) if j != column) + "\n" for line in lines))
    old = Dataset(tmp_path)
    assert "missing_parcels" not in (tmp_path / "manifest.tsv").read_text()
    assert [r["missing_parcels"] for r in old.manifest] == [(), (), ()] and old.present(0).all()
    (batch,) = list(eval_batches([str(tmp_path)], "train", 20, 6, process_index=0, process_count=1))
    assert batch["parcel_mask"].all()
    np.testing.assert_array_equal(old.median, ds.median)


def test_bad_missing_parcels_cell_is_refused(tmp_path):
    _written_dataset(tmp_path, {0: (1,)})
    text = (tmp_path / "manifest.tsv").read_text()
    (tmp_path / "manifest.tsv").write_text(text.replace("\t1\n", "\t9\n", 1))
    with pytest.raises(Exception, match=r"manifest.tsv:2: missing_parcels '9' names parcels outside 0..4"):
        Dataset(tmp_path)


# ---------------------------------------------------------------------------------------------- FC features

def test_fc_features_never_read_missing_parcels():
    rng = np.random.default_rng(5)
    scans = [rng.normal(size=(6, 50)) for _ in range(3)]
    present = [np.ones(6, bool), np.array([True, True, False, True, True, True]), np.ones(6, bool)]
    base = fc_features(scans, present)
    for fill in (np.nan, 0.0, 1e6):
        poisoned = [s.copy() for s in scans]
        poisoned[1][2] = fill
        np.testing.assert_array_equal(fc_features(poisoned, present), base)
    pairs = pair_present(np.stack(present))
    assert np.isnan(base[~pairs]).all() and np.isfinite(base[pairs]).all()
    # present entries: the correlations of the present parcels alone; full scans as without masks
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(base[1][pairs[1]], fc_features([scans[1][keep]])[0], rtol=1e-6)
    np.testing.assert_array_equal(base[[0, 2]], fc_features([scans[0], scans[2]]))
    # the token covariance readout's fill values become NaN the same way
    tokcov = upper_triangle(np.ones((3, 6, 6)))
    np.testing.assert_array_equal(np.isnan(mask_missing_pairs(tokcov, np.stack(present))), ~pairs)
    # group FC: each entry over the scans that have both parcels
    fc = group_fc(scans, present)
    poisoned = [s.copy() for s in scans]
    poisoned[1][2] = 0.0
    np.testing.assert_array_equal(group_fc(poisoned, present), fc)
    z = [np.arctanh(np.clip(np.corrcoef(s), -0.999999, 0.999999)) for s in scans]
    np.testing.assert_allclose(fc[2, 4], (z[0][2, 4] + z[2][2, 4]) / 2, rtol=1e-9)
    np.testing.assert_allclose(fc[0, 1], (z[0][0, 1] + z[1][0, 1] + z[2][0, 1]) / 3, rtol=1e-9)


def test_probe_imputes_missing_entries_from_the_training_fold():
    rng = np.random.default_rng(6)
    n = 24
    x = rng.normal(size=(n, 5))
    y = [f"{v:.4f}" for v in 2 * x[:, 0] + 0.1 * rng.normal(size=n)]
    groups = [f"s{i // 2}" for i in range(n)]
    holes = x.copy()
    holes[[1, 5, 9], 3] = np.nan
    holes[:, 4] = np.nan  # a feature no scan has
    result = probe(holes, y, groups, folds=3)
    assert result["models"]["ridge"]["r2"] > 0.8
    reference = probe(x[:, :4], y, groups, folds=3)
    assert abs(result["models"]["ridge"]["r2"] - reference["models"]["ridge"]["r2"]) < 0.05


# ---------------------------------------------------------------------------------------------- CLI

@pytest.mark.slow
def test_cli_prepare_and_info_report_missing_parcels(partial_inputs, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    for k in (1, 2):  # 4-parcel grid: one missing parcel is 25 %
        vol = random_volume(k)
        if k == 2:
            vol[3:, :3] = 5.0
        write_volume(d / f"sub-0{k}_task-rest_bold.nii.gz", vol)
    labels = tmp_path / "grid.nii.gz"
    nib.save(grid_spec().label_image, labels)
    table = tmp_path / "grid.tsv"
    table.write_text("index\tname\tnetwork\n10\ta\tn1\n20\tb\tn1\n30\tc\tn2\n40\td\tn2\n")
    argv = ["prepare", str(d), "--atlas", str(labels), "--labels", str(table), "--confounds", "none",
            "--min-length", "30", "--quiet"]
    assert cli_main([*argv, "--out", str(tmp_path / "strict"), "--strict", "--max-missing-parcels", "0.25"]) == 1
    assert "missing parcel stops the run" in capsys.readouterr().err
    assert cli_main([*argv, "--out", str(tmp_path / "ds"), "--max-missing-parcels", "0.25"]) == 0
    printed = capsys.readouterr().out
    assert "kept 1 scans with missing parcels" in printed and "PARTIAL" in printed and ": b" in printed
    assert cli_main(["info", str(tmp_path / "ds")]) == 0
    assert "sub-02_task-rest: 1 missing: b (indices 1)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main([*argv, "--out", str(tmp_path / "x"), "--max-missing-parcels", "2"])
    with pytest.raises(SystemExit):
        cli_main(["prepare", "--help"])
    assert "--max-missing-parcels" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- evaluation

def test_evaluation_on_a_dataset_with_missing_parcels(tmp_path):
    """The committed fixture run on its cohort with parcel 5 missing (zeroed) in two scans: the network maps
    and the phenotype probes run, finite, and parcel 5's FC entries come from the scans that have it."""
    import importlib.util
    from pathlib import Path

    from brainjax.eval.network_maps import evaluate_networks, parcel_representations
    from brainjax.eval.phenotypes import evaluate_probes
    from brainjax.run import load_model

    fixtures = Path(__file__).resolve().parent / "fixtures"
    spec = importlib.util.spec_from_file_location("make_v1_runs", fixtures / "make_v1_runs.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    full = Dataset(maker.fixture_dataset(tmp_path / "full"))
    gone = [i for i in full.indices("test")][:2]
    items = []
    for i, row in enumerate(full.manifest):
        data = full.read(i).copy()
        if i in gone:
            data[5] = 0.0
        phen = {k: row[k] for k in full.phenotypes if k != "site"}
        items.append((ScanMeta(row["scan_id"], row["subject"], row["tr"], row["session"], row["site"], phen,
                               missing_parcels=(5,) if i in gone else ()), data))
    write_part(tmp_path / "ds", "part-0-of-1", items)
    info = full.info
    ds = finalize(tmp_path / "ds", full.atlas, info["split_fractions"], info["split_seed"])
    assert [r["split"] for r in ds.manifest] == [r["split"] for r in full.manifest]
    loaded = load_model(fixtures / "v1_runs" / "pretrain")
    reps = parcel_representations(loaded, str(tmp_path / "ds"), "test", batch_size=4, max_windows=8)
    for key in ("embedding", "attention_last", "attention_mean", "tokcov"):
        assert np.isfinite(reps[key]).all(), key
    networks = evaluate_networks(loaded, str(tmp_path / "ds"), "test", batch_size=4, max_windows=8)
    assert networks["comparison"]["verdict"]
    probes = evaluate_probes(loaded, str(tmp_path / "ds"), ("train", "val", "test"), batch_size=8, folds=2)
    assert probes["n_scans"] == 12 and set(next(iter(probes["phenotypes"].values()))) >= {"cls", "mean", "fc"}


def test_baselines_fit_on_complete_scans_and_describe_refuses_partial_ones(tmp_path):
    from brainjax.data.atlas_core import Atlas
    from brainjax.data.dataset import Dataset, ScanMeta, finalize, write_part
    from brainjax.data.descriptors import DescriptorSettings, describe_dataset
    from brainjax.errors import DatasetError
    from brainjax.eval.inputs import normalized_scans

    rng = np.random.default_rng(0)
    items = [(ScanMeta(f"s{i}", f"sub{i}", tr=2.0, missing_parcels=(2,) if i == 1 else ()),
              rng.normal(size=(6, 40)).astype(np.float32)) for i in range(4)]
    items[1][1][2] = 0.0
    write_part(tmp_path / "d", "part", items)
    finalize(tmp_path / "d", Atlas("toy", "coordinates", tuple(f"p{i}" for i in range(6)),
                                   rng.uniform(-50, 50, (6, 3))), fractions=(1.0, 0.0, 0.0))
    dataset = Dataset(tmp_path / "d")
    _, rows = normalized_scans(dataset, "train", complete=True)
    assert [dataset.manifest[i]["scan_id"] for i in rows] == ["s0", "s2", "s3"]
    assert len(normalized_scans(dataset, "train")[1]) == 4
    with pytest.raises(DatasetError, match=r"1 scans miss parcels \(e.g. s1.*--max-missing-parcels 0"):
        describe_dataset(dataset, DescriptorSettings())
