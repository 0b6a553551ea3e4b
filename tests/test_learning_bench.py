"""benchmarks/learning.py's pure parts: when a run counts as having reached a target, and its 95% interval."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from learning import first_reaching, to_targets, wilson_interval  # noqa: E402


def _point(step: int, solved: int, prompts: int = 200, counts: bool = True) -> dict:
    # the accuracy as evaluate_policy reports it: a float32 mean, so 140/200 is 0.699999988079071
    acc = (torch.tensor(float(solved)) / prompts).item()
    p = {"step": step, "tokens": 1000 * step, "seconds": 10.0 * step, "accuracy": acc}
    if counts:
        p.update(solved=solved, prompts=prompts)
    return p


@pytest.mark.parametrize("counts", [True, False])
def test_140_of_200_reaches_70_percent_although_its_float32_is_below(counts):
    assert (torch.tensor(140.0) / 200).item() < 0.7  # the trap: a plain >= missed this point
    pts = [_point(0, 14, counts=counts), _point(15, 139, counts=counts), _point(30, 140, counts=counts),
           _point(45, 150, counts=counts)]
    assert first_reaching(pts, 0.7)["step"] == 30
    assert to_targets(pts, [0.5, 0.7, 0.8]) == {"0.5": (15000, 150.0), "0.7": (30000, 300.0), "0.8": None}


def test_one_short_of_the_target_does_not_reach_it():
    # 139/200 = 0.695; 699/1000 = 0.699: below 0.7 by less than a point, and still not reached
    assert first_reaching([_point(5, 139)], 0.7) is None
    assert first_reaching([_point(5, 699, prompts=1000)], 0.7) is None
    assert first_reaching([_point(5, 700, prompts=1000)], 0.7)["step"] == 5
    assert first_reaching([], 0.5) is None


def test_wilson_interval_by_hand():
    # 140 of 200 at z = 1.96: centre (0.7 + 0.0096040) / 1.019208, half-width 1.96 * sqrt(0.00105 + 0.0000240100) / ...
    low, high = wilson_interval(140, 200)
    assert low == pytest.approx(0.633208, abs=1e-6) and high == pytest.approx(0.759254, abs=1e-6)
    # at 0 of n and n of n the interval touches the bound and keeps some width: 10 of 10 gives (0.722, 1]
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(10, 10)[0] == pytest.approx(0.722460, abs=1e-6)


def test_from_json_labels_rename_runs(tmp_path):
    # two seeds of one algorithm side by side: PATH=LABEL names a file's one run LABEL, several runs LABEL 1, LABEL 2
    import json

    from learning import labelled_results

    one, two = tmp_path / "a.json", tmp_path / "b.json"
    one.write_text(json.dumps([{"algorithm": "GRPO"}]))
    two.write_text(json.dumps([{"algorithm": "TRePO"}, {"algorithm": "GRPO"}]))
    assert [r["algorithm"] for r in labelled_results(f"{one}=GRPO seed 1")] == ["GRPO seed 1"]
    assert [r["algorithm"] for r in labelled_results(f"{two}=run")] == ["run 1", "run 2"]
    assert [r["algorithm"] for r in labelled_results(str(two))] == ["TRePO", "GRPO"]


@pytest.mark.parametrize(("score", "want"), [(1.0, 16), (0.0, 0), (float("nan"), 0)])
def test_episode_accuracy_plays_the_held_out_episodes_and_leaves_the_budget_alone(score, want):
    # the tiny tool config's 16 held-out prompts, played as greedy episodes with the calculator; a reward of 1 solves
    # every one, 0 none, NaN ("does not apply") none; the evaluation's tokens stay out of the training counter
    from learning import episode_accuracy

    from lightning_trepo.cli.demo import quiet_build
    from lightning_trepo.cli.fit import build_cli
    from reward_models import Reward, RewardOutput

    class Constant(Reward):
        def forward(self, samples):
            played.extend(m["final_turn"] for m in samples.metadata)
            return RewardOutput(torch.full((len(samples.completions),), score), {})

    cli = quiet_build(build_cli, ["--config", str(ROOT / "configs" / "tool_calculator.yaml")])
    module, dm = cli.model, cli.datamodule
    module.configure_model()
    dm.setup("fit")
    dm.connect(module.tokenizer)
    played: list[str] = []
    module.reward = Constant()
    module.engine.generated_tokens = 123
    assert episode_accuracy(module, dm) == (want, 16)
    assert module.engine.generated_tokens == 123 and len(played) == 16
