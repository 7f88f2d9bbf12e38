"""Acceptance of every head: its shipped state config, trained on 50 expert demos of reach on the CPU,
succeeds on >= 0.8 of 20 evaluation seeds in the minimal rollout loop (6, 13 and 21 minutes on two cores).

Marked ``acceptance``: not in CI (40 minutes would leave no room in its budget); run with
`bash scripts/test.sh -m acceptance -rP`; the figures of the last run are in
benchmarks/results/reach-acceptance-2core-cpu.txt."""
import pytest

from robopolicy import envs
from robopolicy.config import load_config
from robopolicy.eval.rollout import success_rate
from robopolicy.policy import Policy
from robopolicy.train.trainer import train

pytestmark = pytest.mark.acceptance


@pytest.fixture(scope="module")
def reach_store(tmp_path_factory):
    from robopolicy.collect import collect

    path = tmp_path_factory.mktemp("reach") / "reach.zarr"
    store, _, _ = collect("reach", 50, path, progress=False)
    store.close()
    return path


@pytest.mark.timeout(2700)  # ptp trains for ~13 minutes and ebt for ~21 on two cores: past the suite's 600 s
@pytest.mark.parametrize("config", ["diffusion", "ptp", "ebt"])
def test_shipped_state_config_reaches_80_percent_on_reach(reach_store, tmp_path, config):
    policy = Policy.load(train(load_config(config), reach_store, tmp_path / "run", progress=False))
    rate = success_rate(policy, "reach", envs.eval_seeds(20))
    print(f"reach, shipped {config} config, 50 demos: success {rate:.2f} over 20 evaluation seeds")
    assert rate >= 0.8
