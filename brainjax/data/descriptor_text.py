"""Plain-English sentences about one scan's imaging descriptors, for fMRI-LM style language alignment.

No real pairs of fMRI and text exist, so the language model is trained on text generated from each scan's
descriptors (:mod:`brainjax.data.descriptors`): per-scan numbers and their z-scores against the training
cohort. This module turns those into sentences and keeps the numbers beside the text (``facts``), so a
caption can always be checked against what it claims.

The catalogue (:data:`CATALOGUE`) says, per feature family, what a HIGH and a LOW value means. Every high
phrase uses a word of the "more" family (stronger, higher, larger, more, wider, smoother) and none of the
"less" family (weaker, lower, smaller, less, fewer, narrower, rougher), and vice versa; the neutral noun used
for typical values uses neither, so a typical value is never described as higher or lower.

Size of a deviation, from |z| (see :func:`size_and_direction`)::

    |z| < 0.5         typical    "... is within the typical range"
    0.5 <= |z| < 1.5  slightly   "slightly stronger ..."
    1.5 <= |z| < 2.5  clearly    "clearly stronger ..."
    |z| >= 2.5        much       "much stronger ..."

Each sentence is framed by one of several templates picked with a seeded ``numpy`` Generator, so the same
facts come in several phrasings while a given seed always gives the same text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

__all__ = ["CATALOGUE", "GLOBAL_FEATURES", "describe_scan", "pretty_network", "size_and_direction"]


@dataclass(frozen=True)
class Phrasing:
    """What one feature family means: a neutral noun, and the high/low phrases (``{adv}`` takes the adverb)."""

    noun: str
    high: str
    low: str


_GRADIENT = "the spread of regions along the {gradient} connectivity gradient"
_POSITION = "the average position of the {net} network along the {gradient} connectivity gradient"
CATALOGUE: dict[str, Phrasing] = {
    "fc_within": Phrasing("connectivity within the {net} network",
                          "{adv}stronger connectivity within the {net} network",
                          "{adv}weaker connectivity within the {net} network"),
    "fc_between": Phrasing("coupling between the {a} and {b} networks",
                           "{adv}stronger coupling between the {a} and {b} networks",
                           "{adv}weaker coupling between the {a} and {b} networks"),
    # High modularity = densely connected communities with sparse links between them (segregation);
    # the low phrase avoids "more" so that it stays in one word family.
    "modularity": Phrasing("modularity (how segregated the network's communities are)",
                           "a {adv}more modular, segregated organisation, with densely connected communities and "
                           "sparse links between them",
                           "a {adv}less modular organisation, with communities less segregated and the network "
                           "tending towards global integration"),
    "global_efficiency": Phrasing("global efficiency of the connectivity graph",
                                  "{adv}more efficient global integration", "{adv}less efficient global integration"),
    "clustering": Phrasing("local clustering of connections", "{adv}more locally clustered connections",
                           "{adv}less locally clustered connections"),
    "strength": Phrasing("the overall connection strength of the {net} network's regions",
                         "{adv}stronger overall connectivity of the {net} network's regions",
                         "{adv}weaker overall connectivity of the {net} network's regions"),
    "gradient_range": Phrasing(_GRADIENT, "a {adv}wider spread of regions along the {gradient} connectivity gradient",
                               "a {adv}narrower spread of regions along the {gradient} connectivity gradient"),
    "gradient_mean": Phrasing(_POSITION,
                              "a {adv}higher average position of the {net} network along the {gradient} "
                              "connectivity gradient",
                              "a {adv}lower average position of the {net} network along the {gradient} "
                              "connectivity gradient"),
    "alff": Phrasing("the amplitude of low-frequency fluctuations in the {net} network",
                     "{adv}larger low-frequency fluctuations in the {net} network",
                     "{adv}smaller low-frequency fluctuations in the {net} network"),
    "falff": Phrasing("the share of the {net} network's signal amplitude in the {band} band",
                      "a {adv}larger share of the {net} network's signal amplitude in the {band} band",
                      "a {adv}smaller share of the {net} network's signal amplitude in the {band} band"),
    "band_ratio": Phrasing("the ratio of {band} power to power at faster frequencies in the {net} network",
                           "a {adv}higher ratio of {band} power to power at faster frequencies in the {net} network",
                           "a {adv}lower ratio of {band} power to power at faster frequencies in the {net} network"),
    "autocorr1": Phrasing("the lag-1 autocorrelation of signals in the {net} network",
                          "{adv}smoother, more autocorrelated signals in the {net} network",
                          "{adv}rougher, less autocorrelated signals in the {net} network"),
    "outlier_fraction": Phrasing("the fraction of time points with abrupt signal changes",
                                 "a {adv}larger fraction of time points with abrupt signal changes (possible motion)",
                                 "a {adv}smaller fraction of time points with abrupt signal changes"),
}
# Mentioned in every description where finite: they summarise the whole scan.
GLOBAL_FEATURES = ("modularity", "global_efficiency", "outlier_fraction")

# Upper |z| edge of each size bin and its adverb; the last bin is open-ended.
_SIZES = ((0.5, "typical"), (1.5, "slightly"), (2.5, "clearly"), (math.inf, "much"))
_FRAMES = ("This scan shows {p}.", "Compared with the cohort, this scan has {p}.", "{P} can be seen in this scan.",
           "This scan is characterised by {p}.", "Relative to other scans, this one displays {p}.")
_TYPICAL_FRAMES = ("{N} is within the typical range.", "Compared with the cohort, {n} is typical.",
                   "In this scan, {n} lies within the typical range.")
_ORDINALS = {1: "principal", 2: "second"}
# Yeo/Schaefer abbreviations that the word splitting below cannot expand.
_ABBREVIATIONS = {"vis": "visual", "sommot": "somatomotor", "dorsattn": "dorsal attention",
                  "salventattn": "salience ventral attention", "cont": "control"}
_NETWORK = r"([^.]+)"
_KEYS = (
    (re.compile(rf"^(fc_within|strength|alff|falff|band_ratio|autocorr1)\.{_NETWORK}$"), ("net",)),
    (re.compile(rf"^(fc_between)\.{_NETWORK}\.{_NETWORK}$"), ("a", "b")),
    (re.compile(r"^gradient(\d+)_(range)$"), ("gradient",)),
    (re.compile(rf"^gradient(\d+)_(mean)\.{_NETWORK}$"), ("gradient", "net")),
    (re.compile(r"^(modularity|global_efficiency|clustering|outlier_fraction)$"), ()),
)


def pretty_network(name: str) -> str:
    """A network label as words: ``DefaultMode`` -> ``default mode``, ``fronto-parietal`` -> ``fronto parietal``.

    Acronyms (``DMN``) keep their capitals; other words are lower-cased; letters and digits are split apart.
    """
    expanded = _ABBREVIATIONS.get(name.strip().lower(), name)
    words = re.findall(r"[A-Z]{2,}(?![a-z])|[A-Z]?[a-z]+|[A-Z]|\d+", expanded.replace("-", " ").replace("_", " "))
    return " ".join(w if len(w) > 1 and w.isupper() else w.lower() for w in words) or name


def size_and_direction(z: float) -> tuple[str, str]:
    """Size word and direction of a z-score: ``("typical", "typical")`` for |z| < 0.5, else
    (``"slightly"``/``"clearly"``/``"much"``, ``"higher"``/``"lower"``). z: a finite float."""
    z = float(z)
    if not math.isfinite(z):
        raise ValueError(f"z-score must be finite, got {z}")
    size = next(word for edge, word in _SIZES if abs(z) < edge)
    if size == "typical":
        return size, "typical"
    return size, "higher" if z > 0 else "lower"


def _parse(key: str) -> tuple[str, dict[str, str]] | None:
    """(catalogue family, template fields) of a feature key, or None for a key outside the catalogue."""
    for pattern, fields in _KEYS:
        match = pattern.match(key)
        if match is None:
            continue
        groups = match.groups()
        if fields[:1] == ("gradient",):
            k = int(groups[0])
            values = {"gradient": _ORDINALS.get(k, f"gradient-{k}")}
            values.update({f: pretty_network(g) for f, g in zip(fields[1:], groups[2:])})
            return f"gradient_{groups[1]}", values
        return groups[0], {f: pretty_network(g) for f, g in zip(fields, groups[1:])}
    if key.startswith(tuple(f"{family}." for family in CATALOGUE)):
        raise ValueError(f"feature key {key!r}: malformed (network names may not contain '.')")
    return None


def _number(mapping: dict, key: str, what: str) -> float:
    try:
        value = mapping.get(key)
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}[{key!r}] must be a number, got {mapping.get(key)!r}") from None


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def describe_scan(features: dict, z: dict, *, seed: int, max_sentences: int = 6,
                  low_band: tuple[float, float] = (0.01, 0.08)) -> tuple[str, list[dict]]:
    """Describe one scan in at most ``max_sentences`` sentences, each about one feature.

    features: {key: float} values; z: {key: float} cohort z-scores (missing or NaN = undefined); keys
    outside :data:`CATALOGUE` are ignored. Features with a non-finite value or z are never mentioned. The
    finite :data:`GLOBAL_FEATURES` come first, then the other features, each group by decreasing |z| (ties by
    key). ``low_band`` (Hz) names the band of the ``falff``/``band_ratio`` families.
    Returns (text, facts): facts [{"feature", "value", "z", "size", "direction", "sentence"}] in text order.
    """
    if not isinstance(features, dict) or not isinstance(z, dict):
        raise ValueError(f"features and z must be dicts, got {type(features).__name__} and {type(z).__name__}")
    if max_sentences < 1:
        raise ValueError(f"max_sentences must be at least 1, got {max_sentences}")
    band = f"{low_band[0]:g}-{low_band[1]:g} Hz"
    candidates = []
    for key in features:
        parsed = _parse(key)
        value, score = _number(features, key, "features"), _number(z, key, "z")
        if parsed is None or not (math.isfinite(value) and math.isfinite(score)):
            continue
        candidates.append((key not in GLOBAL_FEATURES, -abs(score), key, value, score, parsed))
    rng = np.random.default_rng(seed)
    facts = []
    for _, _, key, value, score, (family, fields) in sorted(candidates)[:max_sentences]:
        phrasing, size, direction = CATALOGUE[family], *size_and_direction(score)
        if size == "typical":
            noun = phrasing.noun.format(band=band, **fields)
            frame = _TYPICAL_FRAMES[rng.integers(len(_TYPICAL_FRAMES))]
            sentence = frame.format(n=noun, N=_capitalise(noun))
        else:
            template = phrasing.high if direction == "higher" else phrasing.low
            phrase = template.format(adv=f"{size} ", band=band, **fields)
            frame = _FRAMES[rng.integers(len(_FRAMES))]
            sentence = frame.format(p=phrase, P=_capitalise(phrase))
        facts.append({"feature": key, "value": value, "z": score, "size": size, "direction": direction,
                      "sentence": sentence})
    return " ".join(f["sentence"] for f in facts), facts
