"""rsjax.criterion: one Criterion for the oracles, the study and the analysis."""
import numpy as np
import pytest

from rsjax.criterion import Criterion, as_criterion, smoothed_reference
from rsjax.errors import InputError
from rsjax.smoothing import ABSTAIN, predict_from_counts
from rsjax.theory import level_wrong_count


def random_counts(rng, m=200, k=4, n=10):
    return np.stack([np.bincount(rng.integers(0, k, n), minlength=k) for _ in range(m)]).astype(np.int32)


def test_validation_names_the_field():
    with pytest.raises(InputError, match="criterion.*'labels'"):
        Criterion("labels")
    with pytest.raises(InputError, match="p_a.*1.5"):
        Criterion("level", 1.5)
    with pytest.raises(InputError, match="p_a=0.5 is only used with criterion='level'"):
        Criterion("label", 0.5)
    with pytest.raises(InputError, match="abstain_alpha.*'label' only"):
        Criterion("level", 0.5, abstain_alpha=0.01)
    with pytest.raises(InputError, match="abstain_alpha.*open interval"):
        Criterion("label", abstain_alpha=2.0)
    with pytest.raises(InputError, match="reference"):
        Criterion("label", reference="guess")
    with pytest.raises(InputError, match="needs p_a"):
        Criterion("level").k_wrong(10)


def test_decisions_match_their_numpy_statements_ties_included():
    rng = np.random.default_rng(0)
    counts = random_counts(rng)
    y = rng.integers(0, 4, len(counts)).astype(np.int32)
    wrong = counts.sum(1) - counts[np.arange(len(y)), y]
    np.testing.assert_array_equal(np.asarray(Criterion("label").is_adversarial(counts, y)), counts.argmax(1) != y)
    np.testing.assert_array_equal(np.asarray(Criterion("none").is_adversarial(counts, y)), counts.argmax(1) != y)
    for p_a in (0.3, 0.5, 0.8):
        crit = Criterion("level", p_a)
        want = wrong >= level_wrong_count(10, p_a)
        np.testing.assert_array_equal(np.asarray(crit.is_adversarial(counts, y)), want)
        np.testing.assert_array_equal(np.asarray(crit.is_adversarial(counts, y, n=10)), want)
        np.testing.assert_array_equal(np.asarray(Criterion("level").is_adversarial(counts, y, k_wrong=crit.k_wrong(10))),
                                      want)
    with pytest.raises(InputError, match="different n"):
        Criterion("level", 0.5).is_adversarial(np.array([[1, 0], [2, 0]]), np.array([0, 0]))


@pytest.mark.parametrize("success", [False, True])
def test_abstention_is_predicts(success):
    rng = np.random.default_rng(1)
    counts = random_counts(rng, n=20)
    y = rng.integers(0, 4, len(counts)).astype(np.int32)
    pred = predict_from_counts(counts, 0.05)
    crit = Criterion("label", abstain_alpha=0.05, abstain_is_success=success)
    want = np.where(pred == ABSTAIN, success, counts.argmax(1) != y)
    np.testing.assert_array_equal(np.asarray(crit.is_adversarial(counts, y, n=20)), want)
    assert crit.stop_rule(y) is None  # PREDICT needs every sample


@pytest.mark.parametrize("crit", [Criterion("label"), Criterion("level", 0.6)])
def test_stop_rule_is_exact(crit):
    """Where the rule says 'decided' after j of n samples, every completion gives the decision of
    the partial counts' completion by the true remaining samples."""
    rng = np.random.default_rng(2)
    n, k = 12, 3
    samples = rng.integers(0, k, (300, n))
    y = rng.integers(0, k, 300).astype(np.int32)
    full = np.stack([np.bincount(s, minlength=k) for s in samples]).astype(np.int32)
    final = np.asarray(crit.is_adversarial(full, y, n=n))
    stop = crit.stop_rule(y, n=n)
    for j in range(n + 1):
        part = np.stack([np.bincount(s[:j], minlength=k) for s in samples]).astype(np.int32)
        done = np.asarray(stop(part, np.full(300, n - j, np.int32)))
        # a decided row's answer is already fixed: adding any remaining votes cannot change it
        for c in range(k):
            worst = part.copy()
            worst[:, c] += n - j
            alt = np.asarray(crit.is_adversarial(worst, y, n=n))
            assert np.all(alt[done] == final[done]), (j, c)
        if j == n:
            assert done.all()


def test_records_round_trip_and_as_criterion():
    for crit in (Criterion("none"), Criterion("label", abstain_alpha=0.001), Criterion("level", 0.8, reference="smoothed")):
        assert Criterion.from_dict(crit.to_dict()) == crit
        assert as_criterion(crit) is crit
    assert as_criterion("level", p_a=0.8) == Criterion("level", 0.8)
    assert Criterion("level", 0.8).describe() == "level,Pa=0.8"
    assert Criterion("level", 0.8, reference="smoothed").as_label() == Criterion("label", reference="smoothed")
    with pytest.raises(InputError, match="unknown criterion fields"):
        Criterion.from_dict({"kind": "label", "alpha": 0.1})
    with pytest.raises(InputError, match="in the Criterion"):
        as_criterion(Criterion("label"), p_a=0.5)


def test_smoothed_reference_statuses():
    counts = np.array([[100, 0, 0], [0, 100, 0], [50, 50, 0]])
    pred, status = smoothed_reference(counts, np.array([0, 0, 0]), 0.001)
    assert pred.tolist() == [0, 1, ABSTAIN]
    assert status.tolist() == ["ok", "smoothed_wrong", "smoothed_abstain"]


def test_every_kind_has_a_note():
    from rsjax.criterion import KINDS, NOTES

    assert set(NOTES) == set(KINDS)
    assert Criterion("level", 0.5).note == NOTES["level"]


def test_the_study_configuration_names_the_same_criteria():
    from rsjax import criterion
    from rsjax.study import config

    assert set(config.CRITERIA) == set(criterion.CRITERIA)
    assert set(config.REFERENCES) == set(criterion.REFERENCES)
