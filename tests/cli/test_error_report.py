"""Errors a person can act on: every bad setting is reported by the console script in a few lines that name the key,
the bad value and what is accepted, before any model loads; the traceback only with --debug."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lightning_trepo import GRPO, PPO, REINFORCE, RLOO, TRePO, UpdateConfig
from lightning_trepo.algorithms.kl import KL_KINDS
from lightning_trepo.algorithms.losses import AGGREGATIONS
from lightning_trepo.cli.error_report import DEBUG_ENV
from lightning_trepo.cli.main import main
from lightning_trepo.errors import ConfigError, choices
from lightning_trepo.modules.config import Aggregation, KLEstimator, RolloutConfig
from lightning_trepo.policy import LoraConfig, PolicyConfig
from lightning_trepo.policy.models import resolve_model_path
from lightning_trepo.rollout.engine import SamplingConfig
from reward_models import NumericAnswer
from tests.helpers import TINY, rollout_cfg

ROOT = Path(__file__).resolve().parents[2]
GRPO_YAML = str(ROOT / "configs" / "grpo.yaml")
MAX_LINES = 8  # the whole report, banner and debug hint included


def report(capsys, monkeypatch, *args: str) -> str:
    """stderr of ``lightning-trepo fit --config configs/grpo.yaml <args>``, which must exit with status 2."""
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["lightning-trepo"])  # the args come from main's parameter only
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", GRPO_YAML, "--trainer.max_steps", "0", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert lines[0] == "lightning-trepo: configuration error" and "--debug" in lines[-1]
    assert len(lines) <= MAX_LINES, err
    assert "Namespace(" not in err and "Traceback" not in err and "Union subtypes" not in err
    return err


@pytest.mark.parametrize("args, expected", [
    (["--model.init_args.policy.model_path", "/no/such/model"],
     ["model.init_args.policy.model_path = '/no/such/model'", "does not exist", "accepted: a local Hugging Face"]),
    (["--model.init_args.rollout.sampling.temperature", "0"],
     ["model.init_args.rollout.sampling.temperature = 0.0", "accepted: a number > 0"]),
    (["--model.init_args.rollout.sampling.max_new_tokens", "0"],
     ["model.init_args.rollout.sampling.max_new_tokens = 0", "accepted: an integer >= 1"]),
    (["--model.init_args.rollout.sampling.top_p", "1.5"],
     ["model.init_args.rollout.sampling.top_p = 1.5", "accepted: a number in (0, 1]"]),
    (["--model.init_args.policy.torch_dtype", "float8"],
     ["model.init_args.policy.torch_dtype = 'float8'", "accepted: one of float32, fp32, bfloat16"]),
    (["--model.init_args.policy.lora", "{r: 0}"], ["model.init_args.policy.lora.r = 0", "accepted: an integer >= 1"]),
    (["--model.init_args.rolout.group_size", "4"],
     ["unknown config key: model.init_args.rolout.group_size (value 4)",
      "did you mean model.init_args.rollout.group_size?"]),
    (["--model.init_args.rollout.group_size", "1"],
     ["model.init_args.rollout.group_size = 1", "accepted: an integer >= 2", "group of one"]),
    (["--model.init_args.advantage_scale", "stdd"],
     ["model.init_args.advantage_scale = 'stdd'", "accepted: one of group, batch, none"]),
    (["--model.init_args.advantage_eps", "-1"], ["model.init_args.advantage_eps = -1.0", "accepted: a number >= 0"]),
    (["--model.init_args.update.aggregation", "mean"],
     ["model.init_args.update.aggregation = 'mean'", "accepted: one of token_mean, seq_mean_token_mean"]),
    (["--model.init_args.update.clip_low", "1.0"], ["model.init_args.update.clip_low = 1.0", "0 <= clip_low < 1"]),
    (["--model.init_args.update.num_minibatches", "64", "--data.batch_size", "2"],
     ["model.init_args.update.num_minibatches = 64", "at most 16 (data.batch_size 2 x rollout.group_size 8"]),
    (["--trainer.max_stepz", "3"],
     ["unknown config key: trainer.max_stepz (value 3)", "did you mean trainer.max_steps?"]),
    (["--data.batch_sise", "3"], ["unknown config key: data.batch_sise (value 3)", "did you mean data.batch_size?"]),
    (["--model.init_args.reward.init_args.answer_kee", "x"],
     ["unknown config key: model.init_args.reward.init_args.answer_kee",
      "did you mean model.init_args.reward.init_args.answer_key?"]),
    (["--data.batch_size", "x"], ["data.batch_size: Expected a <class 'int'>. Got value: x"]),
    (["--model.init_args.reward", '{"class_path": "reward_models.Normalize", "init_args": {"mode": "rolling", '
      '"inner": {"class_path": "reward_models.NumericAnswer"}}}'],
     ["model.init_args.reward.init_args.mode = 'rolling'", "accepted: one of batch, group, running"]),
])
def test_bad_setting_gets_a_short_report_naming_key_value_and_accepted(capsys, monkeypatch, args, expected):
    err = report(capsys, monkeypatch, *args)
    for text in expected:
        assert text in err, err


@pytest.mark.parametrize("yaml_text, expected", [
    ("model:\n  init_args:\n    rolout:\n      group_size: 4\n",
     ["unknown config key: model.init_args.rolout.group_size", "did you mean model.init_args.rollout.group_size?"]),
    ("data:\n  batch_sise: 4\n", ["unknown config key: data.batch_sise", "did you mean data.batch_size?"]),
    ("model:\n  init_args:\n    update:\n      kl_estimator: k5\n",
     ["model.init_args.update.kl_estimator = 'k5'", "accepted: one of k1, k2, k3"]),
])
def test_typo_in_a_yaml_file_is_named_like_one_on_the_command_line(capsys, monkeypatch, tmp_path, yaml_text, expected):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml_text)
    err = report(capsys, monkeypatch, "--config", str(overlay))
    for text in expected:
        assert text in err, err


def test_truncated_checkpoint_on_the_command_line_is_named(capsys, monkeypatch, tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    err = report(capsys, monkeypatch, "--ckpt_path", str(broken))
    assert f"checkpoint '{broken}' is truncated or not a checkpoint" in err


def test_debug_flag_and_env_keep_the_full_traceback(monkeypatch):
    args = ["fit", "--config", GRPO_YAML, "--model.init_args.advantage_eps", "-1"]
    monkeypatch.setattr(sys, "argv", ["lightning-trepo"])
    with pytest.raises(Exception, match="advantage_eps") as err:
        main([*args, "--debug"])
    assert not isinstance(err.value, SystemExit)
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(Exception, match="advantage_eps"):
        main(args)


@pytest.mark.slow
def test_console_script_report_is_short_end_to_end(tmp_path):
    # the real process: no usage dump, no namespace dump, exit status 2
    cmd = [sys.executable, "-m", "lightning_trepo", "fit", "--config", GRPO_YAML,
           "--model.init_args.rollout.group_size",
           "1"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if "Warning" not in line and "warnings.warn" not in line]
    assert len(lines) <= MAX_LINES and "model.init_args.rollout.group_size = 1" in res.stderr, res.stderr


def test_help_lists_the_choices_of_variant_settings(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-trepo"])
    with pytest.raises(SystemExit):
        main(["fit", "--config", GRPO_YAML, "--model.help", "lightning_trepo.TRePO"])
    out = capsys.readouterr().out
    assert "{uniform,every,boundary,turns}" in out and "{loo,fresh}" in out
    assert "{token_mean,seq_mean_token_mean,seq_mean_token_sum,seq_mean_token_sum_norm}" in out


def test_literal_types_match_the_functions_they_feed():
    assert choices(Aggregation) == AGGREGATIONS and choices(KLEstimator) == KL_KINDS


# ---------------------------------------------------------------------------------------------- construction checks
def reward() -> NumericAnswer:
    return NumericAnswer(answer_key="answer")


@pytest.mark.parametrize("build, key, accepted", [
    (lambda: GRPO(reward(), policy=TINY, rollout=rollout_cfg(group_size=1)), "rollout.group_size", ">= 2"),
    (lambda: GRPO(reward(), policy=TINY, rollout=rollout_cfg(), advantage_scale="stdd"), "advantage_scale",
     "group, batch, none"),
    (lambda: GRPO(reward(), policy=TINY, rollout=rollout_cfg(), advantage_eps=-1.0), "advantage_eps", ">= 0"),
    (lambda: RLOO(reward(), policy=TINY, rollout=rollout_cfg(group_size=1)), "rollout.group_size", ">= 2"),
    (lambda: REINFORCE(reward(), policy=TINY, baseline="mean"), "baseline", "none, running_mean"),
    (lambda: PPO(reward(), policy=TINY, value_model="critic"), "value_model", "head, separate"),
    (lambda: PPO(reward(), policy=TINY, lam=1.5), "lam", "[0, 1]"),
    (lambda: TRePO(reward(), policy=TINY, rollout=rollout_cfg(max_new_tokens=4), num_anchors=4), "num_anchors",
     "at most 3"),
    (lambda: TRePO(reward(), policy=TINY, rollout=rollout_cfg(max_new_tokens=8), anchor_mode="every", num_anchors=3,
                   anchor_every=4), "num_anchors", "at most 1 with anchor_every=4"),
    (lambda: TRePO(reward(), policy=TINY, anchor_mode="boundary", boundary_pattern="("), "boundary_pattern",
     "valid Python regular expression"),
    (lambda: TRePO(reward(), policy=TINY, rollout=rollout_cfg(group_size=1)), "rollout.group_size", "start_value=loo"),
    (lambda: UpdateConfig(clip_low=1.0), "update.clip_low", "0 <= clip_low < 1"),
    (lambda: UpdateConfig(kl_estimator="k4"), "update.kl_estimator", "k1, k2, k3"),
    (lambda: RolloutConfig(group_size=0), "rollout.group_size", ">= 1"),
    (lambda: RolloutConfig(logprob_batch=0), "rollout.logprob_batch", ">= 1"),
    (lambda: SamplingConfig(temperature=0.0), "rollout.sampling.temperature", "> 0"),
    (lambda: SamplingConfig(top_p=0.0), "rollout.sampling.top_p", "(0, 1]"),
    (lambda: SamplingConfig(max_new_tokens=0), "rollout.sampling.max_new_tokens", ">= 1"),
    (lambda: PolicyConfig(torch_dtype="float8"), "policy.torch_dtype", "bfloat16"),
    (lambda: LoraConfig(r=0), "policy.lora.r", ">= 1"),
    (lambda: LoraConfig(dropout=1.0), "policy.lora.dropout", "[0, 1)"),
    (lambda: resolve_model_path("/no/such/model"), "policy.model_path", "local Hugging Face model directory"),
    (lambda: resolve_model_path("builtin:nope", "policy.tokenizer_path"), "policy.tokenizer_path", "builtin:<name>"),
    (lambda: resolve_model_path("pkg:no_such_package_here"), "policy.model_path", "pkg:<package>"),
])
def test_cross_field_constraints_are_checked_at_construction(build, key, accepted):
    with pytest.raises(ConfigError) as err:
        build()
    assert err.value.key == f"model.init_args.{key}" and accepted in err.value.accepted


def test_construction_checks_run_before_any_model_loads(monkeypatch):
    import lightning_trepo.modules.base as base

    monkeypatch.setattr(base, "load_tokenizer", lambda cfg: pytest.fail("loaded the tokenizer before validating"))
    with pytest.raises(ConfigError, match="group_size"):
        GRPO(reward(), policy=TINY, rollout=RolloutConfig(group_size=1, sampling=SamplingConfig(max_new_tokens=4)))


# ---------------------------------------------------------------------------------------------- run-time input errors
def test_bad_jsonl_line_at_run_time_is_a_short_input_error_naming_file_and_line(tmp_path, capsys, monkeypatch):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": \n')
    monkeypatch.setattr(sys, "argv", ["lightning-trepo"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", GRPO_YAML, "--data.source.class_path", "lightning_trepo.data.JsonlSource",
              "--data.source.init_args.path", str(data), "--trainer.max_steps", "1"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and err.splitlines()[0] == "lightning-trepo: input error"
    assert f"{data}:2: invalid JSON" in err and len(err.splitlines()) <= 4 and "Traceback" not in err


def test_internal_errors_keep_their_traceback():
    from lightning_trepo.cli.error_report import describe

    def fit_step():  # a bug inside the project's own training code, not a user's input
        raise RuntimeError("shape mismatch in the loss")

    with pytest.raises(RuntimeError) as err:
        fit_step()
    assert describe(err.value) is None  # reporting_errors re-raises it unchanged


class NaNLossGRPO(GRPO):
    """GRPO whose every loss is NaN (stands in for a diverged run)."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * float("nan")


def test_run_that_only_produces_nan_updates_stops_with_a_short_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-trepo"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", GRPO_YAML, "--model.class_path", "tests.cli.test_error_report.NaNLossGRPO",
              "--model.init_args.policy.model_path", "null", "--model.init_args.rollout.group_size", "2",
              "--data.batch_size", "2", "--trainer.max_steps", "20", "--trainer.logger", "false"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and err.splitlines()[0] == "lightning-trepo: training stopped", err
    # NonFiniteGuard.max_consecutive is 5 in the config: steps 0..4 are skipped, the 5th skip stops the run
    assert "5 consecutive updates had a non-finite loss or gradient" in err and "at step 4" in err
    assert len(err.splitlines()) <= 4 and "Traceback" not in err


def test_overlong_penalty_must_measure_against_the_generation_budget(tmp_path, capsys, monkeypatch):
    from reward_models import Gate, OverlongPenalty, TagFormat, WeightedSum

    def tree(max_length: int) -> WeightedSum:  # the penalty two levels down, as in configs/rewards/math_format_gate
        inner = WeightedSum({"overlong": OverlongPenalty(max_length, 2)})
        return WeightedSum({"correct": Gate(TagFormat(tags=["answer"]), NumericAnswer()), "length": inner})

    fits = rollout_cfg(group_size=2, max_new_tokens=6)
    GRPO(reward=tree(6), policy=TINY, rollout=fits)  # equal: builds
    with pytest.raises(ConfigError) as err:
        GRPO(reward=tree(8), policy=TINY, rollout=fits)
    assert err.value.key == "model.init_args.rollout.sampling.max_new_tokens" and err.value.value == 6
    assert err.value.accepted == "8, the max_length of the OverlongPenalty at reward/length/overlong"
    # the console names it too: base.yaml's budget is 5 tokens
    overlay = tmp_path / "reward.yaml"
    overlay.write_text("class_path: reward_models.OverlongPenalty\ninit_args: {max_length: 7, buffer_length: 2}\n")
    err = report(capsys, monkeypatch, "--model.init_args.reward", str(overlay))
    assert "model.init_args.rollout.sampling.max_new_tokens = 5" in err and "OverlongPenalty at reward" in err
