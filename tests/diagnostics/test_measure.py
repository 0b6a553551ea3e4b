"""measure-variance on the built-in tiny model: projection vs every parameter, PPO, estimator specs, the command."""
from __future__ import annotations

import json

import pytest
import torch

from lightning_trepo import GRPO, PPO, UpdateConfig
from lightning_trepo.cli.main import _tool_commands
from lightning_trepo.diagnostics.command import main
from lightning_trepo.diagnostics.stats import summarize
from lightning_trepo.diagnostics.variance import build_estimators, measure, parse_estimator
from reward_models import Reward, Samples
from tests.helpers import TINY, rollout_cfg


class MeanChar(Reward):
    """Mean character code / 100 of the completion: varies between completions of a random model."""

    def score(self, samples: Samples) -> list[float]:
        return [sum(map(ord, c)) / max(len(c), 1) / 100.0 for c in samples.completions]


def batch(module, prompts=("12+30=", "7+5=")) -> dict:
    return {"prompts": list(prompts), "prompt_ids": [module.tokenizer.encode(p) for p in prompts],
            "metadata": [{} for _ in prompts]}


def tiny(cls=GRPO, **kw):
    module = cls(reward=MeanChar(), policy=TINY, rollout=rollout_cfg(group_size=2, max_new_tokens=4),
                 update=UpdateConfig(), **kw)
    module.configure_model()
    return module


def test_parse_estimator():
    spec = parse_estimator("trepo:2x3:fresh")
    assert spec.cls.__name__ == "TRePO"
    assert spec.init == {"num_anchors": 2, "num_continuations": 3, "start_value": "fresh"}
    assert parse_estimator("grpo:none").init == {"advantage_scale": "none"}
    assert parse_estimator("RLOO").cls.__name__ == "RLOO" and parse_estimator("rloo").init == {}
    assert parse_estimator("trepo").cls.__name__ == "TRePO" and parse_estimator("trepo").init == {}
    for bad in ("trepo:2", "trepo:2x", "grpo:std", "a2c"):
        with pytest.raises(ValueError, match=bad.split(":")[0]):
            parse_estimator(bad)


def test_ppo_needs_a_ppo_config():
    with pytest.raises(ValueError, match="lightning_trepo.PPO"):
        build_estimators(tiny(), [parse_estimator("ppo")])


def test_estimators_share_the_base_models():
    base = tiny()
    (_, grpo), (_, trepo) = build_estimators(base, [parse_estimator("grpo"), parse_estimator("trepo:1x1")])
    assert grpo is base  # the config's own estimator keeps its configured settings
    assert trepo.policy is base.policy and trepo.reward is base.reward and trepo.num_anchors == 1
    assert trepo.tokenizer is base.tokenizer and trepo.engine.tokenizer is base.tokenizer


def test_bare_trepo_is_the_configs_own_trepo():
    from lightning_trepo import TRePO

    base = tiny(TRePO, num_anchors=1, num_continuations=3, anchor_mode="boundary", boundary_pattern="=")
    ((_, own), (_, defaults)) = build_estimators(base, [parse_estimator("trepo"), parse_estimator("trepo:2x2")])
    assert own is base and own.anchor_mode == "boundary" and own.num_continuations == 3
    assert defaults is not base and defaults.anchor_mode == "uniform" and defaults.num_anchors == 2
    (_, plain), = build_estimators(tiny(), [parse_estimator("trepo")])  # a GRPO config: TRePO's defaults
    assert isinstance(plain, TRePO) and plain.num_anchors == 2 and plain.num_continuations == 2


def test_trained_continuations_enter_the_measured_gradient():
    # the same seed draws the same samples and continuations for both; only the trained rows differ, so the token
    # costs are equal and the gradients are not (before, measure-variance dropped TRePO's continuation rows)
    from lightning_trepo import TRePO

    out = {}
    for tree in (False, True):
        base = tiny(TRePO, num_anchors=1, num_continuations=2, train_continuations=tree)
        modules = build_estimators(base, [parse_estimator("trepo"), parse_estimator("rloo")])
        out[tree] = measure(base, modules, batch(base), repeats=2, projection_dim=0, seed=3)
    plain, with_rows = out[False], out[True]
    torch.testing.assert_close(plain.tokens, with_rows.tokens)
    assert (plain.tokens[0] > plain.tokens[1]).all()  # TRePO's continuations cost tokens RLOO's estimate does not
    torch.testing.assert_close(plain.grads[1], with_rows.grads[1])  # RLOO: the same either way
    assert not torch.allclose(plain.grads[0], with_rows.grads[0])


def test_projection_matches_every_parameter():
    """Same seed, same rollouts: the count sketch (d = 4096, relative error ≈ √(2/d) = 2%) gives the variance over
    every parameter of the tiny model within 10%; and the unprojected gradients are the full parameter count."""
    out = {}
    for dim in (0, 4096):
        base = tiny()
        modules = build_estimators(base, [parse_estimator(e) for e in ("reinforce", "grpo", "trepo:1x1")])
        m = measure(base, modules, batch(base), repeats=4, projection_dim=dim, seed=0)
        out[dim] = (m, summarize(m.grads, m.tokens, resamples=50))
    full, proj = out[0][1]["variance"], out[4096][1]["variance"]
    params = sum(p.numel() for p in tiny().policy.parameters())
    assert out[0][0].grads.shape == (3, 4, params) and out[4096][0].grads.shape == (3, 4, 4096)
    torch.testing.assert_close(out[0][0].tokens, out[4096][0].tokens)  # the same rollouts
    for f, p in zip(full, proj, strict=True):
        assert f.value > 0 and abs(p.value / f.value - 1) < 0.10, (f, p)
    # TRePO's estimate costs its continuations on top of the shared samples
    assert bool((out[0][0].tokens[2] > out[0][0].tokens[0]).all())


def test_a_parameter_subset():
    base = tiny()
    modules = build_estimators(base, [parse_estimator("rloo")])
    m = measure(base, modules, batch(base), repeats=2, projection_dim=0, seed=0, params=r"^transformer\.h\.0\.mlp\.")
    expected = sum(p.numel() for n, p in base.policy.named_parameters() if n.startswith("transformer.h.0.mlp."))
    assert m.num_params == expected and m.grads.shape == (1, 2, expected)
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        measure(base, modules, batch(base), repeats=2, params="no-such-layer")


def test_ppo_estimator_reads_its_critic():
    base = tiny(PPO)
    modules = build_estimators(base, [parse_estimator("ppo"), parse_estimator("reinforce")])
    m = measure(base, modules, batch(base), repeats=2, projection_dim=64, seed=0)
    assert m.labels == ["ppo", "reinforce"] and bool(torch.isfinite(m.grads).all())
    assert float(m.grads[0].norm()) > 0


def test_command_writes_table_json_and_plot(tmp_path, capsys):
    assert "measure-variance" in _tool_commands()
    rc = main(["--config", "configs/grpo.yaml", "--repeats", "2", "--prompts", "2", "--group-size", "2",
               "--estimators", "reinforce", "grpo", "trepo:1x1", "--projection-dim", "512", "--bootstrap", "20",
               "--out", str(tmp_path), "--name", "v", "--model.init_args.rollout.sampling.max_new_tokens", "3"])
    assert rc == 0
    report = json.loads((tmp_path / "v.json").read_text())
    assert set(report["estimators"]) == {"reinforce", "grpo", "trepo:1x1"}
    assert report["projection_dim"] == 512 and report["max_new_tokens"] == 3 and report["group_size"] == 2
    for fig in report["estimators"]["grpo"].values():
        assert fig["low"] <= fig["value"] <= fig["high"] or fig["low"] != fig["low"]  # NaN-free or NaN-marked
    assert (tmp_path / "v.png").stat().st_size > 0 and "variance x tokens" in (tmp_path / "v.md").read_text()
    assert "count sketch" in capsys.readouterr().out
