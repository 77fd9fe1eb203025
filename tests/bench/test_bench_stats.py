import math

import numpy as np
import pytest

from dronseg_edge.bench.stats import HIGH_CV, summarize

# Hand-computed with the linear rule: rank r = q/100 * (n - 1) on the sorted samples.
SAMPLES = [4.0, 1.0, 10.0, 2.0, 3.0]  # sorted: 1 2 3 4 10


def test_summarize_hand_computed():
    s = summarize(SAMPLES, batch=4)
    assert s.count == 5 and s.batch == 4
    assert (s.min_ms, s.max_ms, s.mean_ms, s.median_ms) == (1.0, 10.0, 4.0, 3.0)
    # p90: r = 3.6 -> 4 + 0.6 * (10 - 4); p95: r = 3.8 -> 4 + 0.8 * 6; p99: r = 3.96 -> 4 + 0.96 * 6
    assert (s.p90_ms, s.p95_ms, s.p99_ms) == pytest.approx((7.6, 8.8, 9.76))
    # sample std (ddof=1): squared deviations 9+4+1+0+36 = 50, / 4 = 12.5
    assert s.std_ms == pytest.approx(math.sqrt(12.5))
    assert s.cv == pytest.approx(math.sqrt(12.5) / 4.0)
    assert s.throughput_fps == pytest.approx(4 * 1000 / 4.0)  # 4 frames per 4 ms
    assert s.cv > HIGH_CV


def test_summarize_is_order_independent_and_steady_run_is_not_noisy():
    rng = np.random.default_rng(0)
    values = 5.0 + rng.normal(0, 0.05, 200)
    a, b = summarize(values), summarize(rng.permutation(values))
    assert a.to_dict() == pytest.approx(b.to_dict())  # only float summation order differs
    assert a.min_ms <= a.median_ms <= a.p90_ms <= a.p95_ms <= a.p99_ms <= a.max_ms
    assert a.cv < HIGH_CV
    assert a.throughput_fps == pytest.approx(1000 / values.mean())


def test_single_sample_has_zero_spread():
    s = summarize([7.5])
    assert s.std_ms == 0.0 and s.cv == 0.0
    assert s.min_ms == s.median_ms == s.p99_ms == s.max_ms == 7.5


def test_to_dict_round_trips_all_fields():
    d = summarize(SAMPLES).to_dict()
    assert set(d) == {"count", "batch", "min_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms",
                      "std_ms", "cv", "throughput_fps"}
    assert d["p99_ms"] == pytest.approx(9.76)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0], batch=0)
