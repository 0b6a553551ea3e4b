"""The embedded default: shipped tiny-arith weights, evaluation helpers, plot writer, demo pipeline, configs."""
from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from lightning_trepo.policy import ASSETS, PolicyConfig, load_policy
from lightning_trepo.rollout.engine import SamplingConfig
from lightning_trepo.tools.evaluation import evaluate_policy, heldout_rows, mean_pass_at_k, pass_at_k
from reward_models import NumericAnswer, Reward

ROOT = Path(__file__).resolve().parents[2]
TINY = ASSETS / "tiny-arith"


class Always(Reward):
    """Scores every completion 1.0."""

    def score(self, samples):
        return [1.0] * len(samples.completions)


# ---------------------------------------------------------------- pass@k estimator
@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 2 / 5),            # pass@1 = c / n
    (5, 2, 2, 1 - 3 / 10),       # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 3, 5, 1 - 21 / 252),    # 1 - C(7,5)/C(10,5) = 1 - 21/252
    (8, 1, 8, 1.0),              # k = n: solved iff any sample is correct
    (4, 0, 2, 0.0),              # nothing correct
    (4, 4, 1, 1.0),              # everything correct
    (6, 5, 2, 1.0),              # n - c < k: every k-subset holds a correct sample
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_combinatorial_definition():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_rejects_bad_input_and_mean():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    # two prompts, n=4: c=1 -> pass@2 = 1 - C(3,2)/C(4,2) = 1/2; c=4 -> 1; mean 3/4
    assert mean_pass_at_k([1, 4], 4, 2) == pytest.approx(0.75)


# ---------------------------------------------------------------- shipped weights
@pytest.fixture(scope="module")
def tiny():
    if not (TINY / "model.safetensors").is_file():
        pytest.fail(f"shipped weights missing: {TINY} (run scripts/pretrain_tiny.py)")
    model, tok = load_policy(PolicyConfig(model_path="builtin:tiny-arith"))
    return model.eval(), tok


def test_shipped_assets_are_a_small_hf_directory():
    files = {p.name for p in TINY.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "training.json"} <= files
    assert (TINY / "model.safetensors").stat().st_size < 8 * 2**20


def test_shipped_weights_score_the_documented_starting_accuracy(tiny):
    """Greedy decoding is deterministic: the documented number is reproduced up to a couple of argmax flips."""
    model, tok = tiny
    doc = json.loads((TINY / "training.json").read_text())["test_check"]
    rows = heldout_rows("addition", doc["size"], seed=doc["seed"])
    res = evaluate_policy(model, tok, rows, NumericAnswer(), num_samples=0,
                          sampling=SamplingConfig(max_new_tokens=doc["max_new_tokens"]), batch_size=250)
    assert res.greedy_accuracy == pytest.approx(doc["greedy_accuracy"], abs=0.011)
    assert 0.2 <= res.greedy_accuracy <= 0.5  # deliberately partial


def test_shipped_weights_sample_correct_answers_often(tiny):
    """RL needs correct samples: pass@8 far above greedy accuracy (seeded sampling)."""
    model, tok = tiny
    res = evaluate_policy(model, tok, heldout_rows("addition", 100), NumericAnswer(), num_samples=8, ks=(1, 8),
                          sampling=SamplingConfig(max_new_tokens=5), batch_size=100)
    assert res.pass_at_k[8] > res.greedy_accuracy + 0.3
    assert res.pass_at_k[1] == pytest.approx(res.sampled_accuracy)


def test_evaluate_policy_threshold_and_records(tiny):
    model, tok = tiny
    rows = heldout_rows("addition", 6)
    always = Always()
    res = evaluate_policy(
        model, tok, rows, always, num_samples=3, ks=(1, 3, 5), sampling=SamplingConfig(max_new_tokens=4)
    )
    assert res.greedy_accuracy == 1.0 and res.pass_at_k == {1: 1.0, 3: 1.0}  # k=5 > n=3 is skipped
    assert len(res.records) == 6 and all(len(r["samples"]) == 3 for r in res.records)
    strict = evaluate_policy(model, tok, rows, always, num_samples=0, threshold=1.5,
                             sampling=SamplingConfig(max_new_tokens=4))
    assert strict.greedy_accuracy == 0.0 and strict.pass_at_k == {}


# ---------------------------------------------------------------- plots
def test_plot_writer_makes_a_png_from_a_small_csv(tmp_path):
    pytest.importorskip("matplotlib")
    from lightning_trepo.tools.plots import metric_series, plot_training_curves, read_metrics

    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("epoch,reward/total,step,val/accuracy\n0,0.25,0,\n0,0.5,1,\n0,,1,0.4\n0,0.75,2,\n0,,2,0.8\n")
    rows = read_metrics(csv_path)
    assert metric_series(rows, "reward/total") == ([0.0, 1.0, 2.0], [0.25, 0.5, 0.75])
    assert metric_series(rows, "val/accuracy") == ([1.0, 2.0], [0.4, 0.8])
    out = plot_training_curves(csv_path, tmp_path / "plot.png", extra_points={"before": (0, 0.3)})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- configs
def test_the_demo_config_starts_from_the_shipped_model_and_validates_on_held_out_prompts():
    from tests.cli.test_main import cli_parse_only

    cfg = cli_parse_only(["--config", str(ROOT / "configs" / "trepo.yaml")])  # configs/base.yaml comes first
    assert cfg.model.class_path == "lightning_trepo.TRePO"
    assert cfg.model.init_args.policy.model_path == "builtin:tiny-arith"
    assert cfg.data.source.init_args.split == "train" and cfg.data.val_source.init_args.split == "test"


# ---------------------------------------------------------------- demo pipeline
@pytest.mark.slow
def test_demo_pipeline_two_steps(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from lightning_trepo.cli.demo import run

    results = run(["--max-steps", "2", "--eval-size", "8", "--num-samples", "2", "--show", "8",
                   "--save-dir", str(tmp_path), "--", "--trainer.val_check_interval", "1",
                   "--data.val_source.init_args.size", "8", "--data.batch_size", "2",
                   "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false"])
    log_dir = Path(results["log_dir"])
    assert results["steps"] == 2 and set(results["before"]) >= {"greedy_accuracy", "pass@1", "pass@2"}
    assert Path(results["plot"]).read_bytes()[:4] == b"\x89PNG"
    # every held-out row, scored by hand from its operands: the marks, and both accuracies the demo reports
    lines = [ln for ln in (log_dir / "samples.md").read_text().splitlines() if ln.startswith("- prompt")]
    assert len(lines) == 8
    solved = {"before": [], "after": []}
    for line in lines:
        m = re.match(r"- prompt `(.+?)` answer `(\d+)`: before `(.+?)` \((ok|wrong)\) -> after `(.+?)` \((ok|wrong)\)",
                     line)
        assert m, line
        a, b = (int(x) for x in ast.literal_eval(m[1]).rstrip("=").split("+"))
        assert m[2] == str(a + b)
        for when, text, mark in (("before", m[3], m[4]), ("after", m[5], m[6])):
            ok = ast.literal_eval(text).strip() == str(a + b)
            assert mark == ("ok" if ok else "wrong"), line
            solved[when].append(ok)
    assert results["before"]["greedy_accuracy"] == pytest.approx(sum(solved["before"]) / 8)
    assert results["after"]["greedy_accuracy"] == pytest.approx(sum(solved["after"]) / 8)
    # the trainer's last validation ran on the same 8 prompts with the same final weights, greedy: same accuracy
    from lightning_trepo.tools.plots import read_metrics

    val = [r["val/accuracy"] for r in read_metrics(log_dir / "metrics.csv") if "val/accuracy" in r]
    assert len(val) == 2 and val[-1] == pytest.approx(results["after"]["greedy_accuracy"])
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == f"plot: {results['plot']}"


def test_demo_default_config_ships_inside_the_package():
    import lightning_trepo
    from lightning_trepo.cli.demo import DEFAULT_CONFIG

    package = Path(lightning_trepo.__file__).resolve().parent
    assert DEFAULT_CONFIG.is_file() and DEFAULT_CONFIG.is_relative_to(package)  # package data, not the checkout
    assert yaml.safe_load(DEFAULT_CONFIG.read_text())["model"]["class_path"] == "lightning_trepo.TRePO"


def test_shipped_weights_are_the_recorded_ones():
    # training.json records the SHA-256 of the weights pretrain_tiny.py wrote; a changed file without a new record
    # (or a corrupted checkout) would make every documented starting figure stale
    import hashlib

    record = json.loads((TINY / "training.json").read_text())
    assert hashlib.sha256((TINY / "model.safetensors").read_bytes()).hexdigest() == record["sha256"]
    assert record["sha256"] in (TINY / "README.md").read_text()
