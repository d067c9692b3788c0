"""``brainjax instruct``: fMRI-LM stage 3 — instruction-tune a stage-2 run on questions about scans, then
evaluate every question zero-shot and k-shot.

Questions come from the manifest's phenotypes (binary / categorical / numeric, plus age-style tertile groups)
and the descriptors (modularity, efficiency), several paraphrases each (:mod:`brainjax.lm.instructions`).
Training asks, per window, one of the ``--targets`` questions (loss on the answer tokens only, each answer
weighing one: ``language.loss_per_answer``; a description answered in frames drawn per crop when the stage-2
run rephrased); the targets left out are zero-shot targets. Evaluation (``--shots``, test split) scores labels
by their log-probability (true AUROC) and by constrained decoding, numeric targets by free generation, the
description by ROUGE-L, beside chance; the table is printed and written to ``WORKDIR/questions.json``. Rerun to
resume training; ``--eval-only`` skips it.

Recipe log (default data, test split of 32 scans, 8 patients; 2-core AMD EPYC; stage 1 = the ``tokenizer``
preset, stages 2-3 300 steps each (stage 3 900 steps from X16); AUROC [bootstrap 95 %], zero-shot; stage 2:
description NLL per token given the scan's own window minus given another subject's, [95 %]):

===========================================================  ===============  ===============  ==================  =====
hypothesis (what changed)                                    sex AUROC        diagnosis AUROC  stage-2 own -     kept
                                                                                               other
===========================================================  ===============  ===============  ==================  =====
E0 baseline: tokenizer features, default LM v1               0.540 [.26,.85]  0.771 [.50,1.0]  -.000 [-.004,.003] -
E1 + ``fmri_features=tokenizer+fc``                          0.651 [.44,.84]  0.844 [.68,.96]  -.000 [-.004,.003] yes
E3 E1 + default LM v2 (question corpus, whole-token labels)  0.500 [.22,.81]  0.786 [.52,1.0]  -.000 [-.002,.002] v2 yes
prior-calibrated label scores (E1 checkpoint)                bal. acc. .619   bal. acc. .750   -                 row
M1 E1 checkpoint, label scores averaged over 3 windows       0.575 [.34,.80]  0.828 [.57,1.0]  -                 option
X1 E1 without the code loss (``code_weight=0``)              -                -                -.000 [-.002,.001] no
X2 E1 + window connectivity summary (``+summary``)           0.552 [.27,.87]  0.781 [.54,1.0]  +.000 [-.002,.003] yes*
X4 X2 + fMRI tokens RMS-normalised to the text scale         0.460 [.19,.76]  0.797 [.55,1.0]  +.000 [-.002,.002] -
X5 X4's normalisation with tokenizer features only           -                -                -.001 [-.002,.001] -
X6 X2 + ``fmri_norm``: every token part at unit RMS, then    **0.821**        0.609 [.26,.93]  +.001 [-.001,.002] yes
the token at the text scale                                  [.66,.95]
X7 X6 with the LM trained in full (``train_lm=full``)        0.405 [.16,.68]  0.740 [.48,1.0]  **+.003 [.001,     no
                                                                                               .005]**
X6 again with ``train.seed=1`` (stages 2-3)                  0.702 [.45,.93]  0.714 [.40,1.0]  +.001 [-.002,.003] -
X9 X6 + block-local scan attention (``scan_attention``)      0.833 [.69,.96]  0.635 [.28,.96]  +.000 [-.002,.002] yes
X10 X9 + age among the tuned targets (same stage 2)          0.476 [.25,.76]  0.724 [.44,.95]  (X9's)            no
M2 X9 checkpoint, label scores averaged over the scan's 3    0.929 [.76,1.0]  0.604 [.26,1.0]  -                 (X14)
windows (``--windows 3``)
X11 ``fmri_pool=16``: 16 learned tokens per patch, not 300   0.544 [.32,.75]  0.380 [.15,.63]  +.000 [-.000,.000] no
parcels (stage 2 without the code loss, which needs parcels)
X12 X11 + the whole scan as the window (300 TRs)             0.548 [.32,.75]  0.344 [.12,.59]  +.001 [-.001,.003] no
X13 ``fmri_time=window``: one token per parcel per window    0.496 [.29,.72]  0.630 [.39,.86]  -.000 [-.001,.000] no
(patches' features averaged, connectivity row over it)
X14 X13 + the whole scan as the window (300 TRs)             **0.929**        0.693 [.40,.96]  +.000 [-.000,.001] yes
                                                             [.82,1.0]
X14 again, stage 3 with ``train.seed=1``                     **0.964**        0.734 [.48,.96]  (X14's)           -
                                                             [.88,1.0]
C0 X9 with stage 2 trained without the code loss             0.730 [.48,.93]  0.474 [.07,1.0]  -.000 [-.002,.001] -
X15 X14 with stage 3 at ``--lr 6e-3`` (3x)                   0.589 [.33,.82]  0.464 [.30,.64]  (X14's)           no
**X16** X14 with stage 3 for 900 steps (3x)                  0.889 [.70,1.0]  **0.854**        (X14's)           yes
                                                                              [.66,1.0]
X16 again, stage 3 with ``train.seed=1``                     **0.972**        **0.901**        (X14's)           -
                                                             [.91,1.0]        [.74,1.0]
X17 X14 + k-shot training prompts (``train_support=2``)      0.480 [.27,.68]  0.526 [.34,.77]  (X14's)           no
X18 X16 + a second phase: 150 steps of k-shot prompts        0.877 [.70,1.0]  0.839 [.60,1.0]  (X14's)           option
(``--adapt`` X16, ``train_support=4``, ``--lr 5e-4``);       2-shot 0.869     2-shot 0.833
k = 2 as good as zero-shot
X18 again from X16's seed-1 run (``train.seed=1``)           **0.948**        **0.922**        (X14's)           -
                                                             [.86,1.0];       [.77,1.0];
                                                             2-shot 0.948     2-shot **0.937**
X19 X16 from stage 2 with ``fc_reference=cohort`` (rows as    0.909 [.75,.99]  0.828 [.58,1.0]  **+.011 [.005,    option
z-scores against the training cohort; ``adapt``'s S2)         2-shot 0.881     2-shot 0.745     .016]**
**X20** X16 from ``adapt``'s S6 (cohort rows, full LM, 900   **0.992**        **0.969**        **+.074 [.039,    **yes**
steps on 250-TR crops, ``rephrase``)                         [.97,1.0];       [.88,1.0];       .113]**
                                                             2-shot 0.960     2-shot 0.964
X20 again, stage 3 with ``train.seed=1``                     **0.964**        **0.979**        (S6's)            -
                                                             [.88,1.0];       [.93,1.0];
                                                             2-shot 0.937     2-shot **0.995**
X21 the defaults (X20), both stages with ``train.seed=1``;   **1.000**        **0.979**        **+.071 [.031,    -
2-core AMX Xeon                                              [1.0,1.0];       [.92,1.0];       .109]**
                                                             2-shot 0.984     2-shot 0.969
===========================================================  ===============  ===============  ==================  =====

Findings. Until X6 the LM did not read the scans at all: on *training* scans stage 3 scored sex 0.59 and
diagnosis 0.54 (X2, 48 scans) and stage 2's gap was 0.000 there too, so it was not overfitting but not fitting.
The cause measured in X4-X6: the projector's output stood ~400x above the text embeddings (norm 337 vs 0.84),
and within a token the parts stood 26 : 3 : 0.04 (tokenizer features : connectivity row : parcel embedding), so
after the blocks' normalisation a token barely said which parcel it was. Balancing the parts (X6) gave the
first sex AUROC with an interval above chance (balanced accuracy 0.706 [0.53, 0.88] zero-shot; 2-shot 0.841
[0.69, 0.95], balanced accuracy 0.766), while diagnosis (8 patients) fell back inside the chance band. Training
the LM in full (X7) fits the descriptions' wording far better (NLL 0.30 vs 0.70 per token) and gives the only
stage-2 gap whose interval excludes 0, but 0.003 nats against the 0.2 asked, and stage 3 lost sex. A window of
100 TRs bounds what stage 2 can read: the description's network couplings (z) from the first window correlate
0.66 with the whole scan's, two windows of one scan only 0.21, and logistic probes on window network
connectivity predict the direction of modularity / efficiency / clustering at AUROC 0.72 / 0.76 / 0.73.
Averaging three windows at evaluation (M1) did not help a model that had not learnt to read. * the summary and
connectivity row are kept in the default because X6, the best run, has them.

X8 (X6's stage 2, stage 3 tuned on sex, diagnosis, modularity *and age*, all targets evaluated): age answered
as a number by free generation for 32/32 scans (untuned: 0/32, a label word), but R2 -6.3 (untuned -10.5;
the training mean scores -0.46), and sex fell to 0.587 [0.32, 0.85] zero-shot, 0.687 [0.42, 0.89] 2-shot;
diagnosis 0.734 [0.45, 0.97], calibrated balanced accuracy 0.792 [0.66, 0.91]. Rejected: age stays a
zero-shot target by default (one run each, so the sex drop may partly be seed noise).

X9 (X6 with ``scan_attention=block``, same seed): a scan's tokens read only their own scan, so its keys and
values no longer depend on the prompt and evaluation computes each scan once for every target, k and
calibration row. Sex 0.833 [0.69, 0.96] zero-shot (balanced accuracy 0.706 [0.53, 0.88], as X6), 2-shot 0.813
[0.65, 0.94]; diagnosis 0.635 [0.28, 0.96]; stage-2 gap 0.000 [-0.002, 0.002]: no cost measured, kept as the
default. X6 repeated with another seed scored sex 0.702 [0.45, 0.93] (calibrated balanced accuracy 0.698
[0.52, 0.88]) and diagnosis 0.714 [0.40, 1.0] (0.771 [0.64, 0.89]): between seeds sex moves by 0.12, more than
any recipe change since X6, so the sex goal (0.85) is not settled by one good run. The whole default
evaluation (7 targets x k = 0, 1, 2, calibration, description) took 3 min 19 s and 2.52 GiB peak RSS alone,
against 4 min 40 s and 1.97 GiB with causal scan attention (X8 checkpoint, same shapes).

Age as a number (X9 rerun bit for bit from a new stage 2: same figures). Free and grammar-constrained greedy
answers give one number for every scan (X9: "0", R2 -10.5; tuned on age, X10: "12", R2 -6.3), so the stage-3
table now also reads the model's distribution over the whole numbers of the training range (8-80, each scored
like a label): its mean, raw and with the prior over numbers (32 training scans) removed. X9 zero-shot: raw mean
R2 -0.468 (training mean -0.459; r 0.26 [-0.17, 0.64]); calibrated R2 -0.276, above the training mean (95 %
interval of the R2 gain [0.06, 0.70]), MAE 15.5 vs 16.7, r 0.36 [-0.04, 0.62]. The gain is mostly level,
not reading: calibration flattens the prior to the range's middle (44), nearer the test mean (53) than the
training mean (42); a constant 44 scores -0.31. X10 (age tuned) answers "12" to every scan, its calibrated mean
R2 -0.314, and sex falls to chance (0.476): rejected, age stays a zero-shot target.

X11-X14 and M2 (this round): what X9 reads, measured by zeroing one part of every fMRI token at evaluation
(X9, zero-shot sex AUROC 0.833): without the connectivity rows 0.655, without the window summary 0.806,
without the tokenizer features 0.877, so sex is read from the rows. X9 also underfits rather than overfits:
on 96 training scans sex 0.836, diagnosis 0.695. A logistic probe on the test split bounds what one window
holds: network-level connectivity of the first 100 TRs gives sex 0.933, diagnosis 0.844 (parcel-level 0.960,
0.734), of the whole 300-TR scan 0.980 and 0.990 (parcel-level 1.000, 0.979). Reading more of the scan is the
lever: averaging X9's label scores over the scan's three windows (M2) lifts sex to 0.929 [0.76, 1.0] zero-shot
(balanced accuracy 0.865 [0.70, 1.0]) and 0.933 2-shot, at three windows' evaluation cost; one token per parcel
for the whole scan (X14, ``fmri_time=window`` with ``data.window`` the scan) reads it in 300 tokens instead of
600 per 100 TRs: sex 0.929 [0.82, 1.0] and, stage 3 repeated with another seed, 0.964 [0.88, 1.0] (balanced
accuracy 0.937 [0.84, 1.0]), diagnosis 0.693 / 0.734 (calibrated balanced accuracy 0.708 [0.52, 0.88]), now the
default of ``adapt``. Its weak point: k-shot prompts lower it (2-shot sex 0.627 and 0.869, diagnosis 0.547 and
0.521), where X9's did not; stage 3 trains on zero-shot prompts only. Fewer tokens per patch (X11, X12: 16
learned queries reading the parcels) lose the reading entirely, as does one token per 100-TR window (X13):
X13's connectivity rows come from 100 TRs, X14's from 300. All of X11-X14 train stage 2 without the
next-patch code loss (their tokens have no next patch or no parcel to predict a code for). C0 (X9 without it)
scored sex 0.730 [0.48, 0.93]: within X6/X9's seed spread (0.70-0.83), so the loss is worth at most about 0.1
here, and X13 (0.496) falls below C0: one token per 100-TR window loses what per-patch tokens keep, while a
300-TR window more than makes up for it. The whole default evaluation of X14 (seed 1: 7 targets x k = 0, 1, 2,
calibration, age number scores, description) took 2 min 51 s and 1.49 GiB peak RSS alone (``/usr/bin/time -v
brainjax instruct --eval-only``; X9: 4 min 13 s, 1.71 GiB): sex 0.964 / 0.964 / 0.944 at k = 0 / 1 / 2
(calibrated balanced accuracy 0.825 / 0.825 / 0.881); diagnosis 0.734 / 0.479 / 0.464. Which support scans a
prompt draws moves k-shot AUROC by up to 0.08 (sex 2-shot 0.869 with the support set drawn for the two-target
run above).

X15-X17 (this round). X14 underfits diagnosis: on 96 *training* scans its zero-shot AUROC is 0.633 (sex 0.896),
and its last training loss 0.49. A larger step (X15, 3x the learning rate) loses both targets; three times the
steps (X16, 900; training loss 0.11) lifts diagnosis to 0.854 [0.66, 1.0] and, with stage 3's other seed,
0.901 [0.74, 1.0] (calibrated balanced accuracy 0.792 [0.63, 0.95]), sex 0.889 [0.70, 1.0] and 0.972 [0.91,
1.0] (balanced accuracy 0.944 [0.88, 1.0]): the stage-3 default is now 900 steps. k-shot prompts still cost:
X16 at k = 0 / 1 / 2 sex 0.889 / 0.901 / 0.782, diagnosis 0.854 / 0.656 / 0.505; seed 1 at k = 0 / 2 sex 0.972 /
0.964, diagnosis 0.901 / 0.719. Training on k-shot prompts (X17, ``language.train_support=2``: each prompt 0 or
1 support scan per class of a binary target, drawn from other subjects' training scans) cost 3x per step and at
300 steps read neither target (training loss 0.52 against X14's 0.49): the support answers are a shortcut the
LM takes first. ``train_support=4`` (k up to 2, as the evaluation asks) ran at ~5x X14's step time on two cores
and was stopped after 30 steps, unmeasured. Support sets are now drawn per (seed, k, target) and listed in each
row of ``questions.json``, so evaluating a subset of targets asks the same prompts as the whole table; X14
re-evaluated with them: sex 0.929 / 0.933 / 0.913 at k = 0 / 1 / 2, diagnosis 0.693 / 0.516 / 0.380.

X18: support prompts after the zero-shot reading is learnt. ``--adapt`` also takes a stage-3 run, so a second
phase starts from X16's weights: 150 steps at a quarter of the learning rate with ``train_support=4`` (each
prompt 0, 1 or 2 support scans per class, the evaluation's k). k-shot prompts no longer cost: sex 0.877 [0.70,
1.0] zero-shot and 0.869 [0.68, 1.0] 2-shot (X16: 0.889 / 0.782), diagnosis 0.839 [0.60, 1.0] and 0.833 [0.52,
1.0] (X16: 0.854 / 0.505); 2-shot balanced accuracy sex 0.810, diagnosis 0.792 [0.43, 0.96]. Zero-shot lost
0.01-0.02 (inside either interval), which takes diagnosis just under 0.85. From X16's seed-1 run the same phase
gives sex 0.948 [0.86, 1.0] at k = 0 and k = 2 (X16 seed 1: 0.972 / 0.964) and diagnosis 0.922 [0.77, 1.0]
zero-shot, 0.937 [0.80, 1.0] 2-shot (X16 seed 1: 0.901 / 0.719), 2-shot calibrated balanced accuracy 0.875
[0.71, 0.98]. The phase took 32-46 min sharing the two cores with other work (each step ~5x a zero-shot one: five
scans per prompt); it stays an option, not the default, whose three stages fit the hour.

X19: stage 2 with connectivity rows scored against the training cohort (``language.fc_reference=cohort``; the
stage-2 log in :mod:`brainjax.commands.adapt`), then X16's 900 stage-3 steps. Stage 2 reads the scan for the first
time (own - other +0.011 [0.005, 0.016] nats per token). Stage 3, one seed: sex 0.909 [0.75, 0.99] zero-shot
(calibrated balanced accuracy 0.881 [0.77, 0.97]) and 0.881 2-shot (X16: 0.889 / 0.782), diagnosis 0.828 [0.58,
1.0] and 0.745 (X16: 0.854 / 0.505), age's calibrated number-score mean R2 -0.282 against X16's -0.474 (gain over
the training mean [-0.05, 0.78]). Within the seed spread on the zero-shot targets and better at k = 2; an option
until a second seed is measured.

X20: stage 3 (X16's 900 steps) from S6, the stage 2 that reads the scan without memorising its wording (the LM
trained in full on 250-TR crops whose descriptions are rephrased per crop; windows of 250 TRs in stage 3 too).
Two seeds: sex 0.992 [0.97, 1.0] and 0.964 [0.88, 1.0] zero-shot (balanced accuracy 0.889 and 0.944), 0.960 and
0.937 2-shot; diagnosis 0.969 [0.88, 1.0] and 0.979 [0.93, 1.0] zero-shot (balanced accuracy 0.875 and 0.917),
0.964 and 0.995 2-shot (calibrated balanced accuracy 0.938 and 0.875): both targets above X16 (0.889 / 0.972,
0.854 / 0.901) on both seeds, at the FC probe's level (0.96-0.99), with k = 2 within 0.03 of zero-shot on sex
and at or above it on diagnosis. Age (never tuned) scores above the training mean by number scores (R2 -0.404 and
-0.418 against -0.459; gain [0.014, 0.229] and [0.009, 0.176]) but with no correlation (r -0.004 and -0.132):
a better-placed constant, not a reading. Stage 2 of S6 took 23 min and stage 3 16.6 min (cores shared at times),
so with the tokenizer's 7.6 the three stages fit the hour.

X21: S6 and X20 are the defaults (``brainjax adapt``, ``brainjax instruct`` with no options), run again with both
stages at ``train.seed=1`` on a 2-core AMX Xeon: stage 2 reads the scan as much as on seed 0 (+0.071 [0.031,
0.109], own-scan NLL 0.323), stage 3 reads sex 1.000 [1.0, 1.0] zero-shot (balanced accuracy 0.972 [0.91, 1.0]),
0.984 2-shot (0.889), diagnosis 0.979 [0.92, 1.0] (calibrated balanced accuracy 0.938 [0.88, 0.98]), 0.969 2-shot.
The tuned descriptor target reads in this run (at chance with X16's defaults): modularity (lower / typical /
higher) AUROC 0.80 [0.66, 0.92] zero-shot and 0.83 2-shot, balanced accuracy 0.59 and 0.71 [0.53, 0.87] against
1/3; efficiency (never tuned) and site stay at chance. Age's number-score mean R2 -0.384 against the training
mean's -0.459 (gain [0.019, 0.314], r 0.25): weak. The LM trained in full on short answers no longer writes
descriptions (ROUGE-L 0.000 against chance 0.451: it answers the description question with a label, "female",
"control"). Tokenizer 13.1 min (paused 5 min for a benchmark), stage 2 19.7 min, stage 3 15.5 min with its
evaluation, whose 20 target x k blocks took 105 s; peak RSS 2.0-2.4 GB.

X22: X21's stage 3 (same stage 2, seed 1) with the description question tuned as a fourth target, its answer the
record's facts in frames drawn per crop as in stage 2 (``language.rephrase``). Descriptions come back (ROUGE-L
0.501 against chance 0.451; stage 2 alone 0.505) but the labels lose: sex 0.901 [0.75, 0.99], diagnosis 0.901
[0.75, 1.0], modularity 0.759 zero-shot. The answer loss was a mean over tokens, so a batch's two ~130-token
descriptions outweighed its six one-token labels about twenty to one. X23: X22 with each answer weighing one
(``language.loss_per_answer``): sex 0.948 [0.85, 1.0] zero-shot (balanced accuracy 0.909 [0.77, 1.0]), 0.937
2-shot; diagnosis 0.969 [0.87, 1.0] (calibrated balanced accuracy 0.875 [0.70, 0.98]), 0.932 2-shot; modularity
0.783 [0.67, 0.89]; description ROUGE-L 0.486 against 0.451; age number scores R2 -0.406 (gain over the training
mean [0.009, 0.235], r -0.20); 14.2 min with its evaluation on the Xeon alone, peak RSS 2.0 GB. Against X21 the
labels give up 0.05 (sex) and 0.01 (diagnosis) zero-shot AUROC, inside their intervals, for a stage 3 that still
describes scans. X25: X23 again at stage-3 seed 0 (same stage 2): sex 0.956 [0.86, 1.0] zero-shot (balanced
accuracy 0.972 [0.92, 1.0]), 0.972 2-shot; diagnosis 0.943 [0.81, 1.0] (calibrated balanced accuracy 0.854),
0.880 2-shot; modularity 0.832 [0.71, 0.96]; description ROUGE-L 0.491; age R2 -0.401 (r -0.31); 15.3 min, its
evaluation 104 s, peak RSS 2.0 GB. X23 is the default (``--targets sex,diagnosis,modularity,description``, one
weight per answer); ``--targets sex,diagnosis,modularity`` is X21.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from brainjax.commands.args import add_distributed_arguments, add_override_argument, initialize_distributed
from brainjax.errors import CheckpointMismatchError, UsageError

HELP = "fMRI-LM stage 3: instruction-tune on questions about scans, then evaluate zero-/k-shot"
DEFAULT_TARGETS = ("sex", "diagnosis", "modularity", "description")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapt", default="runs/adapt",
                        help="the stage-2 work dir, or a stage-3 one to tune further (default: %(default)s)")
    parser.add_argument("--workdir", default="runs/instruct", help="the run's work dir (default: %(default)s)")
    parser.add_argument("--data", help="dataset directory, or several comma-separated (mixed by data.mix_weights; "
                                       "default: the stage-2 run's)")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                        help="questions tuned on, comma-separated (default: %(default)s); the rest are zero-shot")
    parser.add_argument("--eval-targets", default="all", help="questions evaluated (default: every one available)")
    parser.add_argument("--shots", default="0,1,2", help="k examples per class in the prompt (default: %(default)s)")
    parser.add_argument("--split", default="test", help="evaluation split (default: %(default)s)")
    parser.add_argument("--max-eval", type=int, default=0, help="at most this many scans per target (0 = all)")
    parser.add_argument("--windows", type=int, default=1,
                        help="label scores averaged over up to this many consecutive windows of each evaluated scan "
                             "(default: %(default)s)")
    parser.add_argument("--steps", type=int, default=900, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=8, help="global batch (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the latest checkpoint, no training")
    add_override_argument(parser, "language.text_len=192", " on top of the stage-2 run's config")
    add_distributed_arguments(parser)


def stage3_config(previous, args: argparse.Namespace, data: str, targets: tuple[str, ...]):
    """The stage-2 config with the instruct objective: answer loss only, the tuned targets, new schedule."""
    from brainjax.config import override, with_data, with_steps

    cfg = previous.cfg
    language = dataclasses.replace(cfg.language, targets=targets, code_weight=0.0, lm_weight=0.0,
                                   loss_per_answer=True)
    cfg = dataclasses.replace(cfg, name="instruct", objective="instruct", language=language,
                              data=dataclasses.replace(cfg.data, batch_size=args.batch),
                              optim=dataclasses.replace(cfg.optim, base_lr=args.lr))
    return override(with_steps(with_data(cfg, data), args.steps), args.overrides)


def text_budget(codec, targets: dict, names: list[str], sites: list[str], support: int = 0) -> int:
    """Text tokens the longest tuned prompt (any paraphrase, with the longest source line, and with ``support``
    its most support examples, each with the longest paraphrase and label) and its longest short answer (+ eos)
    need, rounded up to 16; free-text answers are cut to fit instead."""
    from brainjax.lm.instructions import prompt_segments, shot_segments, shots_per_class

    source = max((len(codec.encode(f"Source: {site}. ")) for site in sites if site), default=0)
    need = 0
    for name in names:
        target = targets[name]
        answer = max((len(codec.encode(" " + label)) for label in target.labels), default=4) + 1
        shots = shots_per_class(target, support) * len(target.labels)
        shot = max((sum(len(codec.encode(p)) for k, p in shot_segments([(0, q, label)]) if k == "text") + source
                    for q in target.questions for label in target.labels), default=0)
        for question in target.questions:
            prompt = sum(len(codec.encode(p)) for k, p in prompt_segments(question, 0) if k == "text")
            need = max(need, prompt + source + answer + shots * shot)
    return -(-need // 16) * 16


def _names(text: str, available: dict, what: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UsageError(f"{what}: unknown targets {unknown}; this dataset has {sorted(available)}")
    return names


def _parent(path: str):
    """The run stage 3 starts from: a stage-2 run, or a stage-3 run tuned further (e.g. a second phase with
    k-shot prompts, ``--set language.train_support=N``, from a run trained on zero-shot prompts)."""
    from brainjax.run import load_model

    previous = load_model(path)
    if previous.cfg.objective not in ("adapt", "instruct"):
        raise CheckpointMismatchError(f"{path} is a {previous.cfg.objective!r} run; --adapt needs a stage-2 "
                                      "('adapt') or stage-3 ('instruct') run")
    return previous


def _progress(line: str) -> None:
    from brainjax.distributed import is_main

    if is_main():
        print(line, flush=True)


def main(args: argparse.Namespace) -> int:
    initialize_distributed(args)  # first: nothing may touch a device before it
    from brainjax.data.describe import descriptor_low_band
    from brainjax.data.synthetic import data_or_default
    from brainjax.distributed import is_main
    from brainjax.lm.batches import InstructionSource, TextCodec, window_sequences
    from brainjax.lm.instructions import descriptor_rows
    from brainjax.lm.report import descriptors_path, evaluate_targets, load_question_setup
    from brainjax.lm.scoring import format_table
    from brainjax.lm.stages import continue_warm_start, export_adapters, keep_lm_files
    from brainjax.paths import write_json
    from brainjax.run import launch, load_model
    from brainjax.tasks.fmri_lm import sequence_spec

    out = Path(args.workdir)
    shots = sorted({int(k) for k in args.shots.split(",") if k != ""})
    if args.windows < 1:
        raise UsageError(f"--windows must be at least 1, got {args.windows}")
    previous = load_model(out, objective="instruct") if args.eval_only else _parent(args.adapt)
    data = data_or_default(args.data) if args.data else previous.cfg.data.path
    paths = [Path(p) for p in data.split(",")]
    setups = [load_question_setup(previous.cfg, path, several=len(paths) > 1) for path in paths]
    available = {name: target for _, targets, _ in setups for name, target in targets.items()}
    loaded, cfg = previous, previous.cfg
    if not args.eval_only:
        tuned = tuple(_names(args.targets, available, "--targets"))
        cfg = stage3_config(previous, args, data, tuned)
        codec = TextCodec.from_dir(keep_lm_files(Path(args.adapt) / "lm", out))
        need = 0
        sources = []
        n_parcels = setups[0][0].atlas.n_parcels if len(paths) == 1 else cfg.model.max_parcels
        for path, (dataset, targets, records) in zip(paths, setups):
            own = [n for n in tuned if n in targets]  # each dataset is asked only what its manifest answers
            if not own:
                raise UsageError(f"{path}: none of the --targets {list(tuned)} exist in this dataset "
                                 f"(it has {sorted(targets)})")
            sites = [str(row.get("site") or "") for row in dataset.manifest] if cfg.language.source_line else []
            need = max(need, text_budget(codec, targets, own, sites, cfg.language.train_support))
            band = descriptor_low_band(descriptors_path(cfg, path, len(paths) > 1)) if cfg.language.rephrase else None
            sources.append(InstructionSource(dataset, targets, own, descriptor_rows(dataset, records),
                                             cfg.language.seed, cfg.language.source_line,
                                             support=cfg.language.train_support, window=cfg.data.window,
                                             n_parcels=n_parcels, rephrase_band=band))
        if need > cfg.language.text_len:  # the text budget shapes no parameter: raising it is safe
            _progress(f"language.text_len {cfg.language.text_len} -> {need}: the longest question needs it")
            cfg = dataclasses.replace(cfg, language=dataclasses.replace(cfg.language, text_len=need))
        spec = sequence_spec(cfg, n_parcels, blocks=1 + cfg.language.train_support)
        lineage = dataclasses.replace(previous.lineage, parent=str(Path(args.adapt).resolve()),
                                      parent_step=previous.step)

        def build(batch):
            return window_sequences(batch, sources, codec, spec, per_answer=cfg.language.loss_per_answer)
        result = launch(cfg, out, lineage=lineage, build=build, warm_start=continue_warm_start(previous),
                        mesh=previous.mesh)
        if cfg.language.train_lm == "lora" and not result.preempted:
            export_adapters(result.model, out, lineage.lm_path)
        loaded = load_model(out)  # the latest checkpoint: also right when this run had finished before
    codec = TextCodec.from_dir(out / "lm")
    names = list(available) if args.eval_targets == "all" else _names(args.eval_targets, available,
                                                                         "--eval-targets")
    rows = []
    for path, (dataset, targets, records) in zip(paths, setups):  # one table block per dataset and target
        found = evaluate_targets(loaded, codec, dataset, targets, [n for n in names if n in targets],
                                 tuned=loaded.cfg.language.targets, shots=shots, split=args.split,
                                 seed=cfg.language.seed, descriptors=records, source_line=cfg.language.source_line,
                                 max_scans=args.max_eval, views=args.windows, progress=_progress)
        rows += [{"dataset": path.name, **row} for row in found]
    if not is_main():  # every process scored the same prompts; one writes the report
        return 0
    report = {"workdir": str(out), "step": loaded.step, "split": args.split, "tuned": list(loaded.cfg.language.targets),
              "shots": shots, "windows": args.windows, "rows": rows}
    write_json(out / "questions.json", report, indent=1)
    prefix = (lambda r: f"{r['dataset']}: ") if len(paths) > 1 else (lambda r: "")
    print(format_table([{**r, "target": prefix(r) + r["target"] + ("" if r["tuned"] else " (zero-shot target)")}
                        for r in rows]))
    print(f"-> {out / 'questions.json'}")
    return 0
