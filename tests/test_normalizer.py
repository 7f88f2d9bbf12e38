import numpy as np
import pytest
import torch

from robopolicy.data.normalizer import Normalizer
from robopolicy.errors import ConfigError


def _data(rng):
    x = rng.normal(3, 2, size=(500, 4)).astype(np.float32)
    x[:, 2] = 7.0  # a constant dimension
    return x


def test_minmax_maps_range_to_unit_interval(rng):
    x = _data(rng)
    n = Normalizer.fit({"a": x}, {"a": "minmax"})
    y = n.normalize("a", x)
    for d in (0, 1, 3):
        assert y[:, d].min() == pytest.approx(-1, abs=1e-6) and y[:, d].max() == pytest.approx(1, abs=1e-6)
    assert np.all(y[:, 2] == 0)
    np.testing.assert_allclose(n.unnormalize("a", y), x, rtol=1e-5, atol=1e-5)


def test_gaussian_and_torch_agree_with_numpy(rng):
    x = _data(rng)
    n = Normalizer.fit({"a": x}, {"a": "gaussian"})
    y = n.normalize("a", x)
    np.testing.assert_allclose(y[:, [0, 1, 3]].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(y[:, [0, 1, 3]].std(0), 1, atol=1e-3)
    yt = n.normalize("a", torch.from_numpy(x))
    np.testing.assert_allclose(yt.numpy(), y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(n.unnormalize("a", yt).numpy(), x, rtol=1e-5, atol=1e-5)


def test_statistics_travel_as_flat_tensors(rng):
    x = _data(rng)
    n = Normalizer.fit({"a": x, "b": x[:, :2] * 10}, {"a": "minmax", "b": "gaussian"})
    state = n.state_dict()
    assert set(state) == {"a.scale", "a.offset", "b.scale", "b.offset"}
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    m = Normalizer.from_state_dict(state)
    for key, arr in (("a", x), ("b", x[:, :2] * 10)):
        np.testing.assert_array_equal(m.normalize(key, arr), n.normalize(key, arr))


def test_bad_input_is_a_config_error(rng):
    x = _data(rng)
    with pytest.raises(ConfigError, match="mode"):
        Normalizer.fit({"a": x}, {"a": "zscore"})
    x[3, 1] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        Normalizer.fit({"a": x}, {"a": "minmax"})


def test_min_span_keeps_jitter_small(rng):
    x = rng.normal(0, 1, size=(200, 2)).astype(np.float32)
    x[:, 1] = 0.5 + rng.uniform(-1e-4, 1e-4, 200)  # a resting object's jitter
    n = Normalizer.fit({"a": x}, {"a": "minmax"}, min_span={"a": 0.01})
    y = n.normalize("a", x)
    assert y[:, 0].min() == pytest.approx(-1, abs=1e-5) and y[:, 0].max() == pytest.approx(1, abs=1e-5)
    assert np.abs(y[:, 1]).max() < 0.03
    np.testing.assert_allclose(n.unnormalize("a", y), x, rtol=1e-5, atol=1e-5)
