"""course.stats: the spread over seeds and the interval of a test accuracy, as the lessons print them."""
import pytest

from course import stats


def test_spread_gives_mean_sample_std_and_range():
    assert stats.spread([0.70, 0.75, 0.80]) == "75.0 ± 5.0% (3 seeds, 70.0-80.0)"
    assert stats.spread([0.5]) == "50.0% (1 seed)"


@pytest.mark.parametrize("correct, total, low, high", [(150, 200, 0.686, 0.805), (0, 10, 0.0, 0.278), (10, 10, 0.722, 1.0)])
def test_accuracy_interval_is_the_wilson_interval(correct, total, low, high):
    lo, hi = stats.accuracy_interval(correct, total)
    assert lo == pytest.approx(low, abs=1e-3) and hi == pytest.approx(high, abs=1e-3)
    assert lo <= correct / total <= hi
