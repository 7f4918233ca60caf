"""The statistics of a comparison: each group's interval, its difference to a reference, p-values, best marks.

Input: groups of runs (:class:`Run`: the run's own values from ``metrics.json``, a way to read its
``predictions.npz``, its key within the group, e.g. its seed). Output: per metric tag, a :class:`TagStats`.

Values. A run's value of a tag is its ``metrics.json`` value; a tag it lacks is recomputed from its predictions
(``test/smece`` on a sweep that ran before smECE existed), by the plain definitions of ``ceexp.metrics``.

Intervals (``level``, default 95 %), per group:

- a tag computable from predictions (:func:`ceexp.bootstrap.tag_metric`), every run with predictions: the
  basic interval (:func:`ceexp.bootstrap.basic_interval`, raised to 0 for metrics that cannot be negative) of
  the two-level bootstrap (:func:`ceexp.bootstrap.two_level`: seeds drawn with
  replacement, then test samples; 1,000 resamples by default). With one run, seed-to-seed variation is not
  in it: the interval is the test-sample bootstrap alone (:attr:`TagStats.interval` says ``"test samples"``);
- otherwise (no predictions; the temperature, which is fitted on validation data and has no test-sample
  variation; times): a t-interval over the runs, ``mean ± t_{n-1} s / sqrt(n)`` (``scipy.stats.t``), none
  for one run.

Differences to the reference group: ``mean(group) - mean(reference)``, with the basic interval of the
difference of the two groups' bootstrap replicates. The replicates of two groups pair by test sample when their
runs share the test split (the same resamples, :class:`ceexp.bootstrap.Resampler`) and by seed when the groups
have the same keys (the same seed draws), so the interval is that of a paired difference where pairing exists.
Without predictions: the interval of the t-test below (``confidence_interval()`` of its scipy result).

P-values (two-sided, on the runs' values; scipy, not hand-written):

- both groups with n >= 2 runs: ``scipy.stats.ttest_rel`` when the groups have the same keys (paired by
  seed), else Welch's ``ttest_ind(equal_var=False)``;
- one group with one run, the other with n >= 2: Student's ``ttest_ind(equal_var=True)``. Welch's test needs a
  variance from each group, and a single run has none; the pooled test borrows the larger group's seed-to-seed
  variance for both (assumed equal), which asks the question a single run can answer: is it unusual among the
  other group's runs? (A permutation test over test samples would ignore the seed-to-seed variation that the
  other group shows.)
- one run in each: ``scipy.stats.permutation_test`` over test samples, paired (``permutation_type="samples"``:
  each test sample's two predictions are swapped or not), statistic ``metric(A) - metric(B)`` computed for
  all permutations of a batch at once (:class:`ceexp.bootstrap.WeightedMetrics`), when both runs have
  predictions of the same test labels and bins; otherwise NaN, with a note. This p-value is conditional on
  the two trained models (no seed variation can be seen with one run each).

Holm's correction (``statsmodels.stats.multitest.multipletests(method="holm")``) is applied per tag across
the comparisons to the reference (``p``); a NaN p-value stays NaN and is left out of the family.

Why these choices, and their limits:

- The test split is one draw shared by all runs, so its noise does not average out over seeds: the
  two-level bootstrap evaluates every drawn run on the same test resample (a crossed design), and a
  difference between groups on the same split cancels most of it (pairing by test sample). Resampling both
  levels is somewhat conservative for crossed designs (McCullagh 2000).
- The t-tests condition on the test split (each run's value includes the split's noise, mostly shared): they
  ask whether the training procedures differ on this test set, which is what the table compares.
- The bootstrap interval of a difference and its p-value come from different procedures (resampling test
  samples and seeds; a t-test over seeds) and can disagree near the boundary: the interval says how large the
  difference is, the p-value whether the seeds show it reliably.
- With two or three seeds the seed level has few distinct draws, so the interval is narrower than the truth.
  ECE-like estimators are biased upward, and more so on a resample: the percentile interval would sit above
  the estimate and miss the true value of a well-calibrated model (33 % coverage at a true ECE of 2 %), so the
  interval is the basic one, which subtracts the resampling bias (about 90 %; tests/test_bootstrap.py checks
  coverage on models whose ECE is known in closed form).

Marks (per tag with a direction, :func:`score`): the best-mean group is the one with the lowest mean per-run
score (highest accuracy; smallest ``|log T|`` for the temperature; smallest ``|signed ECE|``; lowest otherwise;
the score is taken run by run, so a group whose runs err both ways does not look calibrated on average). It is
tested against each other group with the tests above on the per-run scores, Holm-corrected across those
comparisons. It is marked ``best`` only when it is significantly better than every other group (adjusted
``p < alpha``); otherwise it and the groups not significantly different from it (including those that cannot be
tested, e.g. a p-value of NaN) are marked ``tied``. No marks with fewer than two groups with values.

Comparability (``classes``): values measured differently (ECE with another number of bins, any metric on another
test split or data set) are not ranked against each other. Per tag, each group has a class; marks are given
within each class (the best of each), differences and p-values only to groups of the reference's class (the
others: NaN, test ``"not comparable ..."``), and Holm's family is those. A group of class ``None`` (its runs were
measured differently from each other) is compared with nothing.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ceexp import bootstrap

__all__ = [
    "NOT_COMPARABLE",
    "Analysis",
    "Run",
    "Settings",
    "TagStats",
    "analyse",
    "best_of",
    "holm",
    "marks",
    "p_value",
    "permutation_p_value",
    "score",
    "t_interval",
]


@dataclass
class Run:
    """One completed run as the statistics see it.

    Attributes:
        key: its identity within its group (the seed, as ``"seed=0"``); groups whose runs have the same keys
            pair by key.
        values: tag -> the run's own value (``metrics.json``); absent or NaN: not recorded.
        predictions: returns the run's ``predictions.npz`` arrays (``ceexp.runs.read_predictions``); ``None``
            when the run has none.
        n_bins: the run's bins (its config's ``n_bins``).
        name: shown in notes.
    """

    key: str
    values: Mapping[str, float]
    predictions: Callable[[], Mapping] | None = None
    n_bins: int = 15
    name: str = ""


@dataclass
class Settings:
    """How the statistics are computed.

    Attributes:
        n_resamples: bootstrap resamples of the vectorised metrics (1,000).
        loop_resamples: resamples of the metrics computed one resample at a time (smECE), and permutations of
            their permutation test (:data:`ceexp.bootstrap.LOOP_RESAMPLES`).
        n_permutations: permutations of the one-run-against-one-run test (1,999: p-values down to 1/2000).
        level: coverage of every interval (0.95).
        alpha: significance level of the marks, after Holm's correction (0.05).
        seed: the seed of every draw (resamples, seed draws, permutations).
        max_chunk_bytes: the weights of one chunk of resamples (16 MiB); peak memory is a small multiple.
    """

    n_resamples: int = 1000
    loop_resamples: int = bootstrap.LOOP_RESAMPLES
    n_permutations: int = 1999
    level: float = 0.95
    alpha: float = 0.05
    seed: int = 0
    max_chunk_bytes: int = 1 << 24


@dataclass
class TagStats:
    """One tag's statistics, one entry per group (in the order given).

    Attributes:
        values: per group, the per-run values (NaN-free), in the order of :attr:`keys`.
        keys: per group, the keys of those runs.
        mean, std, n: mean, sample standard deviation (ddof=1; NaN for one run) and number of runs with a value.
        ci_low, ci_high: the group's interval (NaN when there is none).
        interval: per group, how the interval was made: ``"bootstrap"`` (two levels), ``"test samples"`` (one
            run: the test-sample bootstrap alone), ``"t"`` (t-interval over runs) or ``""`` (none).
        diff, diff_low, diff_high: the difference of means to the reference and its interval (the reference:
            0, 0, 0).
        p_raw, p: the p-value of the difference (NaN for the reference), before and after Holm's correction.
        test: per group, the test behind ``p`` (or why there is none).
        mark: per group, ``"best"``, ``"tied"`` or ``""``.
        replicates: per group, the bootstrap replicates of its mean (``None`` without a bootstrap).
    """

    tag: str
    direction: str | None
    values: list[np.ndarray]
    keys: list[list[str]]
    mean: np.ndarray
    std: np.ndarray
    n: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    interval: list[str]
    diff: np.ndarray
    diff_low: np.ndarray
    diff_high: np.ndarray
    p_raw: np.ndarray
    p: np.ndarray
    test: list[str]
    mark: list[str]
    replicates: list[np.ndarray | None]


@dataclass
class Analysis:
    """The result of :func:`analyse`: tag -> :class:`TagStats`, the reference group, notes for the reader."""

    tags: dict[str, TagStats]
    ref: int
    settings: Settings
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# directions, tests, corrections, marks


def score(values, direction: str | None) -> np.ndarray:
    """Per-value score, lower is better: ``x`` (``"min"``), ``-x`` (``"max"``), ``|log x|`` (``"one"``: the
    temperature, T and 1/T equally far from 1), ``|x|`` (``"zero"``: signed ECE); a non-finite score is +inf.

    Raises:
        ValueError: ``direction`` is None or unknown.
    """
    x = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if direction == "min":
            out = x.copy()
        elif direction == "max":
            out = -x
        elif direction == "one":
            out = np.abs(np.log(x))
        elif direction == "zero":
            out = np.abs(x)
        else:
            raise ValueError(f"Expected argument `direction` to be one of ['min', 'max', 'one', 'zero'], "
                             f"but got {direction!r}")
    out[~np.isfinite(out)] = np.inf
    return out


def best_of(values, direction: str | None) -> set[int]:
    """Indices of the values whose :func:`score` is the lowest (all of them when tied); empty for no direction
    or no finite value."""
    if direction is None:
        return set()
    s = score(values, direction)
    if not np.isfinite(s).any():
        return set()
    return set(np.flatnonzero(s == s.min()).tolist())


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values (``statsmodels.stats.multitest.multipletests(method="holm")``); NaN entries stay
    NaN and are not counted in the family."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    finite = np.isfinite(p)
    if finite.sum() == 1:
        out[finite] = p[finite]  # a family of one: Holm leaves it as it is
    elif finite.any():
        import gc

        # statsmodels' Holm ends with gc.collect(), a fifth of a second with torch loaded; frozen objects are skipped
        gc.freeze()
        try:
            out[finite] = multipletests(p[finite], method="holm")[1]
        finally:
            gc.unfreeze()
    return out


def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """``mean ± t_{n-1, (1+level)/2} s / sqrt(n)`` (``scipy.stats.t.interval``); NaN for fewer than two values."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return math.nan, math.nan
    sem = x.std(ddof=1) / math.sqrt(len(x))
    if sem == 0:
        return float(x.mean()), float(x.mean())
    low, high = stats.t.interval(level, df=len(x) - 1, loc=x.mean(), scale=sem)
    return float(low), float(high)


def _paired_order(keys_a: Sequence[str], keys_b: Sequence[str]) -> tuple[list[int], list[int]] | None:
    """Index orders that align two groups by key, when both have the same (distinct, >= 2) keys; else None."""
    if len(keys_a) < 2 or len(set(keys_a)) != len(keys_a) or set(keys_a) != set(keys_b) or len(keys_b) != len(keys_a):
        return None
    order = sorted(keys_a)
    return [list(keys_a).index(k) for k in order], [list(keys_b).index(k) for k in order]


def _no_difference(a: np.ndarray, b: np.ndarray, order) -> bool:
    """Whether the data show no difference at all: paired runs all equal, or both groups one and the same value."""
    if order is not None:
        return bool(np.array_equal(a[order[0]], b[order[1]]))
    return bool(np.ptp(a) == 0 and np.ptp(b) == 0 and a[0] == b[0])


def p_value(a, b, keys_a: Sequence[str] = (), keys_b: Sequence[str] = (), level: float = 0.95):
    """Two-sided test of equal means of two groups' per-run values, chosen by the group sizes (module docstring).

    Args:
        a, b: per-run values of the two groups.
        keys_a, keys_b: the runs' keys; the same distinct keys in both (n >= 2) pair the runs.

    Returns:
        ``(p, test name, (low, high))``: the p-value, the scipy test used, and the interval of ``mean(a) -
        mean(b)`` that the test gives (NaN where it gives none); ``(nan, reason, (nan, nan))`` when there is no
        test here (one run in each group: see :func:`permutation_p_value`). Runs that are all equal to their
        pairs (or two constant groups of one value) give p = 1: scipy's t = 0 / 0 is NaN, but the data show no
        difference at all.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return math.nan, "no runs", (math.nan, math.nan)
    if len(a) == 1 and len(b) == 1:
        return math.nan, "one run in each group", (math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: scipy's NaN is the answer
        order = _paired_order(keys_a, keys_b) if len(a) >= 2 and len(b) >= 2 else None
        if order is not None:
            result, name = stats.ttest_rel(a[order[0]], b[order[1]]), "paired t-test (ttest_rel)"
        elif len(a) >= 2 and len(b) >= 2:
            result, name = stats.ttest_ind(a, b, equal_var=False), "Welch's t-test (ttest_ind)"
        else:
            result, name = stats.ttest_ind(a, b, equal_var=True), "Student's t-test (ttest_ind, one run)"
        p = float(result.pvalue)
        if _no_difference(a, b, order):
            p = 1.0  # every run equal to its pair (or both groups one value): t = 0/0 (or rounding), no evidence
        try:
            low, high = result.confidence_interval(level)
            interval = (float(low), float(high))
        except (ValueError, ZeroDivisionError, FloatingPointError):
            interval = (math.nan, math.nan)
    return p, name, interval


def marks(
    values: Sequence[np.ndarray],
    keys: Sequence[Sequence[str]],
    direction: str | None,
    alpha: float = 0.05,
    tester: Callable[[int, int], float] | None = None,
) -> tuple[list[str], int | None, np.ndarray]:
    """``best`` / ``tied`` marks of the groups (module docstring).

    Args:
        values: per group, the per-run values.
        keys: per group, the runs' keys (pairing).
        direction: ``"min"``, ``"max"``, ``"one"``, ``"zero"`` or None (no marks).
        alpha: significance level after Holm's correction.
        tester: ``tester(best, other) -> p`` for the pairs that :func:`p_value` cannot test (one run each);
            default: NaN (untestable: tied).

    Returns:
        ``(marks, best-mean group or None, Holm-adjusted p of best vs each group (NaN for itself and untested))``.
    """
    g = len(values)
    out = [""] * g
    adjusted = np.full(g, np.nan)
    if direction is None:
        return out, None, adjusted
    scores = [score(v, direction) for v in values]
    live = [i for i in range(g) if len(scores[i]) and np.isfinite(scores[i]).all()]
    if len(live) < 2:
        return out, None, adjusted
    means = np.array([scores[i].mean() for i in live])
    best = live[int(np.argmin(means))]
    others = [i for i in live if i != best]
    raw = []
    for i in others:
        p, _, _ = p_value(scores[best], scores[i], keys[best], keys[i])
        if not np.isfinite(p) and len(scores[best]) == 1 and len(scores[i]) == 1 and tester is not None:
            p = tester(best, i)
        raw.append(p)
    adjusted[others] = holm(raw)
    better = [np.isfinite(adjusted[i]) and adjusted[i] < alpha and scores[i].mean() > scores[best].mean()
              for i in others]
    if all(better):
        out[best] = "best"
    else:
        out[best] = "tied"
        for i, significant in zip(others, better):
            if not significant:
                out[i] = "tied"
    return out, best, adjusted


# ---------------------------------------------------------------------------------------------------------
# the analysis


@dataclass
class _RunResult:
    values: dict[str, float]  # tag -> the run's value (record, else recomputed)
    replicates: dict[str, np.ndarray] = field(default_factory=dict)  # tag -> test-sample bootstrap replicates


def _recompute(run: Run, tags: Sequence[str], settings: Settings, notes: list[str]) -> _RunResult:
    """The run's values, and replicates of its tags computable from predictions."""
    values = {t: float(run.values.get(t, math.nan)) for t in tags}
    result = _RunResult(values)
    wanted = [t for t in tags if bootstrap.tag_metric(t) is not None]
    if run.predictions is None or not wanted:
        return result
    predictions = run.predictions()
    variants: dict[tuple[str, bool], list[tuple[str, str]]] = {}
    for tag in wanted:
        split, base, scaled = bootstrap.tag_metric(tag)
        variants.setdefault((split, scaled), []).append((tag, base))
    for (split, scaled), members in variants.items():
        logits, labels = predictions[f"{split}_logits"], predictions[f"{split}_labels"]
        temperature = float(predictions.get("temperature", math.nan)) if scaled else None
        if len(labels) == 0 or (scaled and not (math.isfinite(temperature) and temperature > 0)):
            continue
        table = bootstrap.WeightedMetrics.from_logits(logits, labels, run.n_bins, temperature)
        stream = bootstrap.split_stream(labels)
        reps = bootstrap.replicates(table, [b for _, b in members],
                                    bootstrap.Resampler(len(labels), settings.seed, stream),
                                    settings.n_resamples, settings.loop_resamples, settings.max_chunk_bytes)
        for tag, base in members:
            result.replicates[tag] = reps[base]
            recomputed = table.point(base)
            recorded = result.values[tag]
            if not math.isfinite(recorded):
                result.values[tag] = recomputed
            elif abs(recorded - recomputed) > 1e-5 + 1e-4 * abs(recorded):
                notes.append(f"{run.name or run.key}: {tag} in metrics.json is {recorded:.6g}, recomputed from "
                             f"predictions.npz {recomputed:.6g} (a changed definition?); the interval is the "
                             f"recomputed one's")
    return result


def _group_replicates(results: Sequence[_RunResult], keys: Sequence[str], tag: str, settings: Settings):
    """The two-level replicates of a group's mean of ``tag``, or None when a run has no replicates."""
    reps = [r.replicates.get(tag) for r in results]
    if not reps or any(x is None for x in reps) or len({len(x) for x in reps}) != 1:
        return None
    order = sorted(range(len(keys)), key=lambda i: keys[i])  # draws index the runs in key order
    per_run = np.stack([reps[i] for i in order])
    draws = bootstrap.seed_draws(len(order), per_run.shape[1], settings.seed,
                                 bootstrap.keys_stream([keys[i] for i in order]))
    return bootstrap.two_level(per_run, draws)


def permutation_p_value(run_a: Run, run_b: Run, tag: str, direction: str | None = None,
                        settings: Settings | None = None, stream: Sequence[int] = (0, 1)) -> tuple[float, str]:
    """Paired permutation test over test samples of one run against one run (``scipy.stats.permutation_test``,
    ``permutation_type="samples"``, ``settings.n_permutations`` resamples, or ``settings.loop_resamples`` for a
    metric without a weighted form; ``rng=numpy.random.default_rng([settings.seed, *stream])``): statistic
    ``s(metric(A)) - s(metric(B))`` with ``s`` the identity, or :func:`score` for the directions ``"one"`` and
    ``"zero"`` (the marks test the scores). :func:`analyse` passes the two groups' indices ``(i, j)``, ``i < j``,
    as ``stream``, and run ``A`` from group ``i``.

    Returns:
        ``(p, test name)``; ``(nan, reason)`` when the test does not apply (no predictions, different test labels
        or bins, a tag not computable from predictions).
    """
    from scipy import stats

    settings = settings or Settings()
    parsed = bootstrap.tag_metric(tag)
    if parsed is None:
        return math.nan, "one run in each group, and not computable from predictions"
    if run_a.predictions is None or run_b.predictions is None:
        return math.nan, "one run in each group, without predictions"
    if run_a.n_bins != run_b.n_bins:
        return math.nan, "one run in each group, with different n_bins"
    split, base, scaled = parsed
    tables = []
    for run in (run_a, run_b):
        pred = run.predictions()
        temperature = float(pred["temperature"]) if scaled else None
        if scaled and not (math.isfinite(temperature) and temperature > 0):
            return math.nan, "one run in each group, one without a temperature"
        tables.append((bootstrap.WeightedMetrics.from_logits(pred[f"{split}_logits"], pred[f"{split}_labels"],
                                                              run.n_bins, temperature), pred[f"{split}_labels"]))
    (ta, ya), (tb, yb) = tables
    if len(ya) != len(yb) or not np.array_equal(ya, yb):
        return math.nan, "one run in each group, on different test labels"
    n = len(ya)
    pool = bootstrap.WeightedMetrics(np.concatenate([ta.probs, tb.probs]), np.concatenate([ya, yb]), ta.n_bins,
                                     nll=np.concatenate([ta.nll, tb.nll]))
    transform = (lambda m: score(m, direction)) if direction in ("one", "zero") else (lambda m: m)

    def statistic(x, y, axis=-1):
        single = np.ndim(x) == 1  # the observed statistic; a batch of permutations is (batch, n)
        x, y = np.atleast_2d(x).astype(np.int64), np.atleast_2d(y).astype(np.int64)
        rows = len(x)
        w = np.zeros((2 * rows, 2 * n))
        np.put_along_axis(w[:rows], x, 1.0, axis=1)
        np.put_along_axis(w[rows:], y, 1.0, axis=1)
        m = transform(pool.evaluate([base], w)[base])
        out = m[:rows] - m[rows:]
        return out[0] if single else out

    looped = base not in bootstrap.VECTORISED_METRICS
    count = settings.loop_resamples if looped else settings.n_permutations
    batch = max(1, settings.max_chunk_bytes // (8 * 2 * 2 * n))
    import inspect

    generator = np.random.default_rng([settings.seed, *stream])
    # scipy >= 1.15 names the generator `rng`; before, `random_state` (the same draws from the same Generator)
    seeding = "rng" if "rng" in inspect.signature(stats.permutation_test).parameters else "random_state"
    result = stats.permutation_test((np.arange(n), np.arange(n) + n), statistic, permutation_type="samples",
                                    vectorized=True, n_resamples=count, batch=batch, alternative="two-sided",
                                    **{seeding: generator})
    return float(result.pvalue), f"paired permutation test over test samples (permutation_test, {count})"


NOT_COMPARABLE = "not comparable with the reference (measured with other settings)"


def analyse(
    groups: Sequence[Sequence[Run]],
    tags: Sequence[str],
    ref: int = 0,
    directions: Mapping[str, str | None] | None = None,
    settings: Settings | None = None,
    classes: Mapping[str, Sequence[Hashable | None]] | None = None,
) -> Analysis:
    """Intervals, differences to ``groups[ref]``, p-values and marks of every tag (module docstring).

    Args:
        groups: the runs of each group (a group may be empty).
        tags: metric tags (``test/ece``, ``test/temperature``, ...).
        ref: index of the reference group.
        directions: tag -> ``"min"`` / ``"max"`` / ``"one"`` / ``"zero"`` / None (no marks); default None.
        settings: resamples, level, alpha, seed.
        classes: tag -> per group its comparability class (module docstring); a tag without one: all groups
            comparable.

    Returns:
        :class:`Analysis`. Predictions are read run by run and not kept (the permutation test of one run against
        one run reads the two again).
    """
    settings = settings or Settings()
    directions = directions or {}
    notes: list[str] = []
    results = [[_recompute(run, tags, settings, notes) for run in group] for group in groups]
    classes = classes or {}
    out = {tag: _analyse_tag(groups, results, tag, ref, directions.get(tag), settings, classes.get(tag))
           for tag in tags}
    return Analysis(out, ref, settings, notes)


def _analyse_tag(groups, results, tag: str, ref: int, direction: str | None, settings: Settings,
                 classes: Sequence[Hashable | None] | None = None) -> TagStats:
    g = len(groups)
    cls = list(classes) if classes is not None else [0] * g
    if len(cls) != g:
        raise ValueError(f"Expected argument `classes` to give one class per group ({g}), but got {len(cls)} "
                         f"for {tag}")
    values, keys, reps, interval = [], [], [], []
    ci = np.full((2, g), np.nan)
    for i, (group, res) in enumerate(zip(groups, results)):
        have = [j for j, r in enumerate(res) if math.isfinite(r.values[tag])]
        values.append(np.array([res[j].values[tag] for j in have]))
        keys.append([group[j].key for j in have])
        rep = _group_replicates([res[j] for j in have], keys[-1], tag, settings) if have else None
        reps.append(rep)
        if rep is not None:
            lower = None if tag.rsplit("/", 1)[-1].startswith("ece_signed") else 0.0  # the rest cannot be negative
            ci[:, i] = bootstrap.basic_interval(rep, values[-1].mean(), settings.level, lower)
            interval.append("bootstrap" if len(have) > 1 else "test samples")
        elif len(have) >= 2:
            ci[:, i] = t_interval(values[-1], settings.level)
            interval.append("t")
        else:
            interval.append("")
    n = np.array([len(v) for v in values])
    mean = np.array([v.mean() if len(v) else np.nan for v in values])
    std = np.array([v.std(ddof=1) if len(v) > 1 else np.nan for v in values])

    permutations: dict[tuple, float] = {}

    def permuted(a: int, b: int, transformed: bool) -> tuple[float, str]:
        """One run of group a against one of group b, the lower index first; cached (two-sided: symmetric)."""
        key = (min(a, b), max(a, b), transformed)
        if key not in permutations:
            run_a, run_b = (_run_with_value(groups[k], results[k], tag) for k in key[:2])
            permutations[key] = permutation_p_value(run_a, run_b, tag, direction if transformed else None,
                                                    settings, stream=key[:2])
        return permutations[key]

    diff = mean - mean[ref]
    diff_ci = np.full((2, g), np.nan)
    p_raw = np.full(g, np.nan)
    test = [""] * g
    for i in range(g):
        if i == ref:
            diff_ci[:, i] = 0.0
            test[i] = "reference"
            continue
        if cls[i] is None or cls[i] != cls[ref]:
            diff[i], test[i] = np.nan, NOT_COMPARABLE
            continue
        p, name, t_ci = p_value(values[i], values[ref], keys[i], keys[ref], settings.level)
        if n[i] == 1 and n[ref] == 1:
            p, name = permuted(i, ref, False)
        p_raw[i], test[i] = p, name
        if reps[i] is not None and reps[ref] is not None and len(reps[i]) == len(reps[ref]):
            diff_ci[:, i] = bootstrap.basic_interval(reps[i] - reps[ref], diff[i], settings.level)
        else:
            diff_ci[:, i] = t_ci
    others = [i for i in range(g) if i != ref]
    p = np.full(g, np.nan)
    p[others] = holm(p_raw[others])

    transformed = direction in ("one", "zero")  # the marks test the scores; "min" / "max": the values themselves
    mark = [""] * g
    for c in dict.fromkeys(c for c in cls if c is not None):  # ranked within each class of comparable groups
        members = [i for i in range(g) if cls[i] == c]
        within, _, _ = marks([values[i] for i in members], [keys[i] for i in members], direction, settings.alpha,
                             lambda a, b, m=members: permuted(m[a], m[b], transformed)[0])
        for i, x in zip(members, within):
            mark[i] = x
    return TagStats(tag, direction, values, keys, mean, std, n, ci[0], ci[1], interval, diff, diff_ci[0],
                    diff_ci[1], p_raw, p, test, mark, reps)


def _run_with_value(group: Sequence[Run], results: Sequence[_RunResult], tag: str) -> Run | None:
    """The one run of a one-run group that has a value of ``tag``."""
    for run, res in zip(group, results):
        if math.isfinite(res.values[tag]):
            return run
    return None
