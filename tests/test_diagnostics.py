import numpy as np
import pytest

from robopolicy.eval import diagnostics


def test_early_score_takes_a_fixed_number_of_scored_chunks():
    scores = [None, None, [3.0, 1.0], [2.0, 5.0], [4.0, 4.0], [9.0, 9.0]]
    chosen = [0, 0, 1, 0, 1, 0]
    assert diagnostics.early_score(scores, chosen, n=3) == pytest.approx((1.0 + 2.0 + 4.0) / 3)  # not the 4th
    assert diagnostics.early_score(scores, chosen, n=5) is None  # too few scored chunks: no score at all


def test_auroc_and_its_shuffled_baseline():
    failed = [True] * 10 + [False] * 10
    assert diagnostics.auroc(np.arange(20)[::-1], failed) == 1.0  # failures score highest
    assert diagnostics.auroc(np.arange(20), failed) == 0.0
    assert diagnostics.auroc([1.0] * 20, failed) == 0.5  # ties carry no signal
    lo, hi, p = diagnostics.shuffled_auroc(np.arange(20)[::-1], failed, n=500)
    assert lo < 0.5 < hi < 1.0 and p < 0.01
    noise = np.random.default_rng(0).normal(size=20)
    assert diagnostics.shuffled_auroc(noise, failed, n=500)[2] > 0.05
    with pytest.raises(ValueError):
        diagnostics.auroc([1.0, 2.0], [True, True])


def test_action_dependency_tells_a_copycat_sequence_from_noise():
    rng = np.random.default_rng(0)

    def ar(coef):
        a = [0.1 * rng.normal(size=4) / np.sqrt(1 - coef ** 2)]  # from the stationary spread
        for _ in range(99):
            a.append(coef * a[-1] + 0.1 * rng.normal(size=4))
        return np.array(a, np.float32)

    assert diagnostics.action_dependency([ar(0.98) for _ in range(16)]) > 0.85  # R^2 of AR(c): c^2
    assert 0.1 < diagnostics.action_dependency([ar(0.6) for _ in range(16)]) < 0.5
    assert abs(diagnostics.action_dependency([ar(0.0) for _ in range(16)])) < 0.05
    assert diagnostics.action_dependency([ar(0.9)] * 7) is None  # too few episodes to hold half out


def test_failures_are_counted_by_how_the_task_says_they_ended():
    episodes = [{"success": False, "outcome": {"presses": 3, "away": True}},
                {"success": False, "outcome": {"presses": 1, "away": False}},
                {"success": False, "outcome": {"presses": 4, "away": False}},
                {"success": True, "outcome": {"presses": 2, "away": True}}]
    assert diagnostics.failure_kinds("button-twice", episodes) == {"pressed 3+ times": 2, "pressed once": 1}
    assert diagnostics.failure_kinds("button-twice", [{"success": False}]) is None  # no outcomes recorded
    assert diagnostics.failure_kinds("reach", episodes) is None  # the task names no kinds


def test_failure_distances_are_medians_per_kind_where_the_task_gives_one():
    def ended(success, cue, nearer, distance, lifted=True):
        return {"success": success, "outcome": {"cue": cue, "nearer": nearer, "distance": distance, "lifted": lifted}}

    reach = [ended(False, 0, 0, 0.06), ended(False, 0, 0, 0.08), ended(False, 1, 1, 0.055),
             ended(False, 1, 0, 0.2), ended(True, 0, 0, 0.01)]  # a success's distance counts nowhere
    assert diagnostics.failure_distances("cue-reach", reach) == {"short of the cued target": 0.06,
                                                                  "reached for the other target": 0.2}
    place = [ended(False, 0, 0, 0.3, lifted=False), ended(False, 0, 0, 0.07)]  # an unlifted puck has no distance
    assert diagnostics.failure_distances("cue-pick-place", place) == {"cued goal, not placed": 0.07}
    assert diagnostics.failure_distances("button-twice", [{"success": False, "outcome": {"presses": 1}}]) == {}
