"""Descriptor text: words agree with the z-scores, selection rules, seeded phrasing, and `brainjax describe`."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from brainjax.data.descriptor_text import describe_scan, pretty_network, size_and_direction

# Independent of the module: the words a sentence may use for each direction.
UP = {"stronger", "higher", "larger", "more", "wider", "greater", "smoother"}
DOWN = {"weaker", "lower", "smaller", "less", "fewer", "narrower", "rougher"}
ADVERBS = {"slightly", "clearly", "much"}
GLOBALS = ("modularity", "global_efficiency", "outlier_fraction")

# One feature of every family, with network names in the styles of real atlases.
FEATURES = {
    "fc_within.default": 0.4, "fc_within.fronto-parietal": 0.3, "fc_between.DefaultMode.Visual": 0.05,
    "global_efficiency": 0.5, "modularity": 0.35, "clustering": 0.3, "strength.SomMot": 4.0,
    "gradient1_range": 0.3, "gradient2_range": 0.2, "gradient1_mean.Visual": -0.05, "gradient2_mean.default": 0.01,
    "alff.Visual": 1.2, "falff.cingulo-opercular": 0.4, "band_ratio.Visual": 2.0, "autocorr1.default": 0.6,
    "outlier_fraction": 0.02,
}


def expected_size(z: float) -> str:
    a = abs(z)
    return "typical" if a < 0.5 else "slightly" if a < 1.5 else "clearly" if a < 2.5 else "much"


def words(sentence: str) -> set[str]:
    return set(re.findall(r"[a-z]+", sentence.lower()))


def test_size_and_direction_bins():
    cases = {0.0: ("typical", "typical"), 0.49: ("typical", "typical"), -0.49: ("typical", "typical"),
             0.5: ("slightly", "higher"), -1.49: ("slightly", "lower"), 1.5: ("clearly", "higher"),
             -2.49: ("clearly", "lower"), 2.5: ("much", "higher"), -7.0: ("much", "lower")}
    for z, expected in cases.items():
        assert size_and_direction(z) == expected, z
    with pytest.raises(ValueError, match="finite"):
        size_and_direction(float("nan"))


def test_pretty_network_names():
    assert pretty_network("fronto-parietal") == "fronto parietal"
    assert pretty_network("DefaultMode") == "default mode"
    assert pretty_network("MedialTemporalLobe") == "medial temporal lobe"
    assert pretty_network("Somatomotor_Dorsal") == "somatomotor dorsal"
    assert pretty_network("DMN") == "DMN"
    assert pretty_network("synthetic3") == "synthetic 3"
    assert pretty_network("SomMot") == "somatomotor"


@pytest.mark.parametrize("trial", range(25))
def test_words_match_sign_and_size(trial):
    rng = np.random.default_rng(trial)
    z = {k: float(v) for k, v in zip(FEATURES, rng.normal(0, 2, len(FEATURES)))}
    text, facts = describe_scan(FEATURES, z, seed=trial, max_sentences=len(FEATURES))
    assert len(facts) == len(FEATURES)
    assert text == " ".join(f["sentence"] for f in facts)
    for fact in facts:
        score, found = z[fact["feature"]], words(fact["sentence"])
        assert fact["z"] == score and fact["value"] == FEATURES[fact["feature"]]
        size = expected_size(score)
        assert fact["size"] == size
        if size == "typical":
            assert fact["direction"] == "typical"
            assert "typical" in found and not found & (UP | DOWN | ADVERBS), fact["sentence"]
            continue
        same, opposite = (UP, DOWN) if score > 0 else (DOWN, UP)
        assert fact["direction"] == ("higher" if score > 0 else "lower")
        assert found & ADVERBS == {size}, fact["sentence"]
        assert found & same and not found & opposite, fact["sentence"]
        assert "typical" not in found


def test_network_names_appear_prettified():
    z = dict.fromkeys(FEATURES, 3.0)
    _, facts = describe_scan(FEATURES, z, seed=0, max_sentences=len(FEATURES))
    by_key = {f["feature"]: f["sentence"] for f in facts}
    assert "default mode and visual networks" in by_key["fc_between.DefaultMode.Visual"]
    assert "fronto parietal network" in by_key["fc_within.fronto-parietal"]
    assert "somatomotor network" in by_key["strength.SomMot"]
    assert "principal connectivity gradient" in by_key["gradient1_range"]
    assert "second connectivity gradient" in by_key["gradient2_range"]
    assert "0.01-0.08 Hz" in by_key["falff.cingulo-opercular"]
    _, facts = describe_scan(FEATURES, z, seed=0, max_sentences=len(FEATURES), low_band=(0.02, 0.1))
    assert "0.02-0.1 Hz" in {f["feature"]: f["sentence"] for f in facts}["band_ratio.Visual"]


def test_modularity_wording():
    for seed in range(4):
        _, (high,) = describe_scan({"modularity": 0.5}, {"modularity": 2.0}, seed=seed)
        _, (low,) = describe_scan({"modularity": 0.2}, {"modularity": -2.0}, seed=seed)
        assert "more modular" in high["sentence"] and "segregated" in high["sentence"]
        assert "less modular" in low["sentence"] and "integration" in low["sentence"]
        assert "more modular" not in low["sentence"] and "less modular" not in high["sentence"]


def test_seeded_phrasing():
    z = {k: (-1) ** i * (0.6 + 0.3 * i) for i, k in enumerate(FEATURES)}
    first = describe_scan(FEATURES, z, seed=3)
    assert describe_scan(FEATURES, z, seed=3) == first
    runs = [describe_scan(FEATURES, z, seed=s) for s in range(6)]
    assert len({text for text, _ in runs}) >= 2
    strip = lambda facts: [{k: v for k, v in f.items() if k != "sentence"} for f in facts]
    assert all(strip(facts) == strip(first[1]) for _, facts in runs)


def test_selection_globals_first_then_by_abs_z():
    z = {k: 4.0 + i for i, k in enumerate(FEATURES)}  # every local feature beats the globals on |z|
    z.update(modularity=0.1, global_efficiency=-0.2, outlier_fraction=0.3)
    _, facts = describe_scan(FEATURES, z, seed=0, max_sentences=5)
    chosen = [f["feature"] for f in facts]
    assert len(chosen) == 5 and set(chosen[:3]) == set(GLOBALS)
    rest = sorted((k for k in FEATURES if k not in GLOBALS), key=lambda k: -abs(z[k]))
    assert chosen[3:] == rest[:2]
    assert [abs(f["z"]) for f in facts[:3]] == sorted((abs(f["z"]) for f in facts[:3]), reverse=True)


def test_nan_never_mentioned():
    z = {k: 3.0 for k in FEATURES}
    z["modularity"] = math.nan  # undefined z
    del z["alff.Visual"]  # no z at all
    features = dict(FEATURES, **{"clustering": math.nan, "unknown_feature": 1.0})
    z.update(unknown_feature=9.0)
    for max_sentences in (1, 3, 6, 50):
        text, facts = describe_scan(features, z, seed=1, max_sentences=max_sentences)
        chosen = [f["feature"] for f in facts]
        assert len(chosen) == min(max_sentences, len(FEATURES) - 3)
        assert not {"modularity", "alff.Visual", "clustering", "unknown_feature"} & set(chosen)
        assert "modular" not in text and "clustered" not in text
        assert chosen[:2] == ["global_efficiency", "outlier_fraction"][:max_sentences]


def test_bad_input():
    with pytest.raises(ValueError, match="max_sentences"):
        describe_scan(FEATURES, {}, seed=0, max_sentences=0)
    with pytest.raises(ValueError, match="must be a number"):
        describe_scan({"modularity": 0.3}, {"modularity": "high"}, seed=0)
    with pytest.raises(ValueError, match="malformed"):
        describe_scan({"fc_between.a.b.c": 0.3}, {"fc_between.a.b.c": 1.0}, seed=0)
    with pytest.raises(ValueError, match="dicts"):
        describe_scan([("modularity", 0.3)], {}, seed=0)


# ------------------------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    from brainjax.data.synthetic import SynthConfig, synthesize

    path = tmp_path_factory.mktemp("describe") / "d"
    synthesize(path, SynthConfig(subjects=12, scans_per_subject=1, timepoints=120, atlas="dosenbach160", sites=2,
                                 seed=1), (0.6, 0.2, 0.2))
    return path


def _no_nan(name):
    raise ValueError(f"non-standard JSON constant {name}")


def test_describe_command(dataset_dir, tmp_path, capsys):
    from brainjax.cli import main
    from brainjax.data.dataset import Dataset

    out = tmp_path / "desc"
    assert main(["describe", "--data", str(dataset_dir), "--out", str(out), "--max-sentences", "4"]) == 0
    printed = capsys.readouterr().out
    lines = (out / "descriptors.jsonl").read_text().splitlines()
    manifest = Dataset(dataset_dir).manifest
    assert len(lines) == len(manifest) == 12
    rows = [json.loads(line, parse_constant=_no_nan) for line in lines]
    assert [r["scan_id"] for r in rows] == [m["scan_id"] for m in manifest]
    assert [r["split"] for r in rows] == [m["split"] for m in manifest]
    for row in rows:
        assert row["text"] and 1 <= len(row["facts"]) <= 4
        assert row["text"] == " ".join(f["sentence"] for f in row["facts"])
        for fact in row["facts"]:  # every fact points back at the row's own numbers
            assert fact["value"] == row["features"][fact["feature"]] and fact["z"] == row["z"][fact["feature"]]
        assert {"modularity", "global_efficiency"} <= {f["feature"] for f in row["facts"]}
    for i in (0, 5):  # the documented per-scan phrasing seed: SeedSequence([seed, manifest index])
        z = {k: math.nan if v is None else v for k, v in rows[i]["z"].items()}
        seed = int(np.random.SeedSequence([0, i]).generate_state(1)[0])
        assert describe_scan(rows[i]["features"], z, seed=seed, max_sentences=4)[0] == rows[i]["text"]
    cohort = json.loads((out / "cohort.json").read_text(), parse_constant=_no_nan)
    assert cohort["n_train"] == sum(m["split"] == "train" for m in manifest)
    assert rows[0]["text"] in printed and "12 scans" in printed
    assert not list(out.glob("*.tmp*"))


def test_describe_missing_data(tmp_path, capsys):
    from brainjax.cli import main

    missing = tmp_path / "nowhere"
    assert main(["describe", "--data", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(missing) in err
