"""YAML trees (jsonargparse), user plugins, rollout JSONL and the score / serve-reward entry points."""
import json
from pathlib import Path

import pytest
import yaml
from rm_helpers import assert_close, nan, samples

from reward_models import Normalize, Reward, WeightedSum
from reward_models.cli import score_main, summarize
from reward_models.config import build_reward
from reward_models.rollouts import read_rollouts, samples_to_rows, write_rollouts

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "rewards").rglob("*.yaml"))
NEEDS_FILES = {"learned_rm_length.yaml"}  # a placeholder model path: parse only


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_reward_configs_parse_and_build(path):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--reward", type=Reward)
    cfg = parser.parse_object({"reward": yaml.safe_load(path.read_text())})  # validates every init_arg
    assert cfg.reward.class_path.startswith("reward_models.")
    if path.name not in NEEDS_FILES:
        assert isinstance(build_reward(path), Reward)


def test_math_config_scores_by_hand():
    tree = build_reward(ROOT / "configs/rewards/math_format_gate.yaml")
    good = "<think>2+2</think><answer>4</answer>"
    s = samples([good, "4", good + " " * 900], [{"answer": 4}] * 3)
    out = tree(s)
    # no mask: L in characters. row 0: gate open, correct -> 1, L=36 -> 0; row 1: gate closed -> 0;
    # row 2: L = 936 -> ramp (768 - 936)/256 = -0.65625, plus 1
    assert_close(out.rewards, [1, 0, 1 - 168 / 256])
    assert set(out.metrics) == {"correct", "correct/gate", "correct/inner", "correct/inner/extracted", "overlong"}


def test_user_class_plugs_in_by_class_path():
    tree = build_reward(Path(__file__).with_name("rm_user_tree.yaml"))
    assert isinstance(tree, WeightedSum) and type(tree.components["polite"]).__name__ == "KeywordBonus"
    s = samples(["4 please please", "five"], [{"answer": 4}, {"answer": 5}])
    out = tree(s)
    # row 0: correct 1 + 2 * (-0.01 * (15 - 10)) + 0.25 * 2 = 1.4; row 1: 0 + 0 + 0 = 0
    assert_close(out.rewards, [1.4, 0])
    assert_close(out.metrics["polite"], [0.5, 0])


def test_build_reward_errors_name_the_source(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("class_path: reward_models.Gate\ninit_args: {gate: {class_path: reward_models.NumericAnswer}}\n")
    with pytest.raises(ValueError, match=r"(?s)bad.yaml: cannot build the reward tree.*required: inner"):
        build_reward(bad)
    with pytest.raises(FileNotFoundError, match="missing.yaml does not exist"):
        build_reward(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("foo: 1\n")
    with pytest.raises(ValueError, match="no reward tree found"):
        build_reward(tmp_path / "empty.yaml")


def test_build_reward_from_training_config():
    node = {"class_path": "reward_models.Normalize",
            "init_args": {"inner": {"class_path": "reward_models.NumericAnswer"}, "mode": "group"}}
    tree = build_reward({"model": {"class_path": "x.GRPO", "init_args": {"reward": node}}})
    assert isinstance(tree, Normalize) and tree.mode == "group"


def test_rollouts_roundtrip_and_flat_columns(tmp_path):
    s = samples(["a", "bb"], [{"answer": 1}, {"answer": 2}], prompts=["p", "q"], group_index=[0, 1])
    path = tmp_path / "r.jsonl"
    write_rollouts(path, s)
    with open(path, "a") as f:
        f.write(json.dumps({"prompt": "p", "completion": "c", "answer": 7}) + "\n\n")
    back = read_rollouts(path)
    assert back.completions == ["a", "bb", "c"] and back.metadata[2] == {"answer": 7}
    assert back.group_index.tolist() == [0, 1, 0]
    assert samples_to_rows(back)[1]["metadata"] == {"answer": 2}


def test_rollouts_written_by_training_are_read(tmp_path):
    """Rows as lightning_trepo's RolloutWriter writes them: step/reward/components are outputs, not metadata."""
    rows = [{"step": st, "prompt": "p", "completion": c, "metadata": {"answer": 1}, "reward": 0.0, "components": {}}
            for st, c in [(0, "a"), (0, "b"), (1, "c")]]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    back = read_rollouts(path)
    assert back.metadata == [{"answer": 1}] * 3
    assert back.group_index.tolist() == [0, 0, 1]  # same prompt, another step: another group


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "r.jsonl:2: invalid JSON"),
        ('{"prompt": "p"}', "r.jsonl:2: 'completion' must be a string"),
        ('{"prompt": "p", "completion": "c", "metadata": [1]}', "r.jsonl:2: 'metadata' must be an object"),
    ],
)
def test_rollouts_bad_rows_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "r.jsonl"
    path.write_text('{"prompt": "p", "completion": "c"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_rollouts(path)


def test_score_main_prints_statistics(tmp_path, capsys):
    rollouts = tmp_path / "r.jsonl"
    rows = [{"prompt": "q", "completion": c, "metadata": {"answer": 4}} for c in ["4", "5", "4", "x"]]
    rollouts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tree = tmp_path / "tree.yaml"
    tree.write_text(
        yaml.safe_dump(
            {
                "class_path": "reward_models.WeightedSum",
                "init_args": {
                    "components": {
                        "ok": {"class_path": "reward_models.NumericAnswer"},
                        "fmt": {"class_path": "reward_models.RegexFormat", "init_args": {"pattern": "^x$"}},
                    }
                },
            }
        )
    )
    assert score_main(["--rollouts", str(rollouts), "--reward", str(tree), "--json", "--batch-size", "2"]) == 0
    table = {r["component"]: r for r in json.loads(capsys.readouterr().out)}
    # ok = [1, 0, 1, 0] -> mean 0.5, std 0.5; fmt = [0, 0, 0, 1]; total = [1, 0, 1, 1] -> mean 0.75
    assert table["ok"]["mean"] == pytest.approx(0.5) and table["ok"]["std"] == pytest.approx(0.5)
    assert table["total"]["mean"] == pytest.approx(0.75) and table["fmt"]["nan_rate"] == 0
    assert table["total"]["latency_s"] > 0 and table["ok/extracted"]["latency_s"] is None
    assert score_main(["--rollouts", str(rollouts), "--reward", str(tree)]) == 0
    assert "total" in capsys.readouterr().out


def test_score_main_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        score_main(["--rollouts", str(tmp_path / "none.jsonl"), "--reward", "x.yaml"])
    assert info.value.code == 2 and "none.jsonl does not exist" in capsys.readouterr().err


def test_summarize_nan_rate():
    import torch

    from reward_models import RewardOutput

    table = summarize(RewardOutput(torch.tensor([1.0, nan, 3.0, nan])), {})
    assert table[0]["mean"] == 2 and table[0]["std"] == 1 and table[0]["nan_rate"] == 0.5


@pytest.mark.slow  # a subprocess: a fresh interpreter imports lightning and transformers (seconds of startup)
def test_serve_reward_entry_point_over_loopback():
    """``serve-reward`` as a process (what the console script runs), scored by RemoteReward."""
    import subprocess
    import sys

    from reward_models.remote import RemoteReward

    config = ROOT / "configs/rewards/math_format_gate.yaml"
    proc = subprocess.Popen([sys.executable, "-m", "reward_models.cli", "serve-reward", "--config", str(config),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving WeightedSum on http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split(" on ")[1].split()[0]
        out = RemoteReward(url)(samples(["<think>x</think><answer>4</answer>", "4"], [{"answer": 4}] * 2))
        assert_close(out.rewards, [1, 0])  # gate open and correct; gate closed
        assert "correct/inner" in out.metrics
    finally:
        proc.terminate()
        proc.wait(timeout=10)
