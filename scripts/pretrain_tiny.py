"""Pretrain the shipped tiny policy ``builtin:tiny-arith`` (supervised, deliberately partial).

A GPT-2-style character model (the project's ``build_char_tokenizer`` + ``build_tiny_model``) is
trained by next-token cross-entropy on the completions (answer + EOS) of the built-in tasks' TRAIN
splits (addition, format, two_step mixed). The teacher is a *sloppy student*: in every sum
(addition and format tasks) it forgets each carry with probability ``--forget-carry`` (default
0.6), independently per digit position and freshly drawn each time a row is used (38+47 -> "75"
instead of "85"; 85+47 -> "22" or "122" or "32" instead of "132"). The model learns that habit:
it knows how to carry but mostly does not, so its greedy answer is right only on sums without a
carry (about a third of 2-digit sums), while sampling gets carried sums right often enough (pass@8
far above greedy accuracy). That is the deliberate partial accuracy the RL demo starts from: a
response-level reward (is the number right?) has a clear path to >= 90% by making every carry.

    python scripts/pretrain_tiny.py                  # writes lightning_trepo/assets/tiny-arith/
    python scripts/pretrain_tiny.py --out /tmp/x     # somewhere else

Everything is seeded (model init, data order, teacher noise) and torch is pinned to ``--threads``
(default 2): reruns with the same thread count on the same CPU type give bit-identical weights
(checked: equal safetensors SHA-256). ``tiny-arith/training.json`` records the arguments, the
training curve and the held-out numbers of the saved directory; ``README.md`` there summarises them.

    python scripts/pretrain_tiny.py --render-readme   # only rewrite README.md from training.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightning_trepo.data.tasks import generate_task  # noqa: E402
from lightning_trepo.policy import TinyModelConfig, build_char_tokenizer, build_tiny_model  # noqa: E402
from lightning_trepo.rollout.engine import SamplingConfig  # noqa: E402
from lightning_trepo.tools.evaluation import evaluate_policy, heldout_rows  # noqa: E402
from reward_models import NumericAnswer  # noqa: E402

DEFAULT_OUT = ROOT / "lightning_trepo" / "assets" / "tiny-arith"
SHAPE = TinyModelConfig(n_layer=4, n_head=4, n_embd=128, n_positions=64, seed=0)
MIX = {"addition": 6000, "format": 1500, "two_step": 1500}
"""Training rows per task (train split, seed 0); the held-out split is never seen."""


def sloppy_sum(a: int, b: int, forget: float, rng: random.Random) -> int:
    """a + b written digit by digit from the right, each carry forgotten with probability ``forget``."""
    total, place, carry = 0, 1, 0
    while a or b or carry:
        s = a % 10 + b % 10 + carry
        total += (s % 10) * place
        carry = int(s >= 10 and rng.random() >= forget)
        a, b, place = a // 10, b // 10, place * 10
    return total


REPORT_BUDGET = {"addition": 6, "format": 24, "two_step": 6}
"""max_new_tokens per task in the final held-out report."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (linear warmup, cosine decay)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--forget-carry", type=float, default=0.6, help="probability the teacher forgets a carry")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-size", type=int, default=200, help="held-out addition prompts checked while training")
    p.add_argument("--stop-at", type=float, default=None, help="stop early at this held-out greedy accuracy")
    p.add_argument("--report-size", type=int, default=500, help="held-out prompts for the final report")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--render-readme", action="store_true", help="only rewrite README.md from training.json")
    return p.parse_args(argv)


def training_rows(seed: int) -> list[dict]:
    rows: list[dict] = []
    for task, size in MIX.items():
        rows += generate_task(task, "train", size=size, seed=seed, digits=2)
    return rows


def target_text(row: dict, forget: float, rng: random.Random) -> str:
    """The teacher's completion for a row: sums by the sloppy student, the format task's answer tagged."""
    answer = row["answer"]
    if row["task"] in ("addition", "format"):
        answer = str(sloppy_sum(*row["operands"], forget, rng))
    return f"<answer>{answer}</answer>" if row["task"] == "format" else answer


def encode_example(row: dict, tokenizer, forget: float, rng: random.Random) -> tuple[list[int], int]:
    """(prompt + target + EOS ids, prompt length) of one row, with freshly drawn teacher noise."""
    prompt = tokenizer(row["prompt"])["input_ids"]
    completion = tokenizer(target_text(row, forget, rng))["input_ids"] + [tokenizer.eos_token_id]
    return prompt + completion, len(prompt)


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded ids, attention mask and labels (-100 on prompt and padding: loss on completions only)."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (seq, plen) in enumerate(examples):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, plen: len(seq)] = torch.tensor(seq[plen:])
    return ids, mask, labels


def held_out_accuracy(model, tokenizer, rows, num_samples: int = 0, max_new_tokens: int = 6) -> dict[str, float]:
    model.eval()
    result = evaluate_policy(model, tokenizer, rows, NumericAnswer(), num_samples=num_samples, ks=(1, 4, 8),
                             sampling=SamplingConfig(temperature=1.0, max_new_tokens=max_new_tokens),
                             batch_size=100)
    model.train()
    return result.as_dict()


def train(args: argparse.Namespace) -> tuple[torch.nn.Module, object, dict]:
    torch.manual_seed(args.seed)
    tokenizer = build_char_tokenizer()
    shape = TinyModelConfig(**{**vars(SHAPE), "seed": args.seed})
    model = build_tiny_model(shape, len(tokenizer))
    rows = training_rows(args.seed)
    check_rows = heldout_rows("addition", args.eval_size, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (
        1.0 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    rng = random.Random(args.seed)
    order: list[int] = []
    history, t0, step = [], time.perf_counter(), 0
    model.train()
    while step < args.steps:
        if len(order) < args.batch_size:
            order += rng.sample(range(len(rows)), len(rows))
        batch = [encode_example(rows[i], tokenizer, args.forget_carry, rng) for i in order[: args.batch_size]]
        order = order[args.batch_size:]
        ids, mask, labels = collate(batch, tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        if step % args.eval_every == 0 or step == args.steps:
            acc = held_out_accuracy(model, tokenizer, check_rows)["greedy_accuracy"]
            history.append({"step": step, "loss": round(float(loss.detach()), 4), "heldout_greedy_accuracy": acc})
            print(f"step {step:5d} loss {float(loss.detach()):.4f} held-out greedy acc {acc:.3f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
            if args.stop_at is not None and acc >= args.stop_at:
                break
    return model, tokenizer, {"steps": step, "history": history, "train_seconds": time.perf_counter() - t0}


def measure(out: Path, report_size: int) -> dict:
    """Held-out numbers of the SAVED directory, loaded the way the trainer loads ``builtin:tiny-arith``."""
    from lightning_trepo.policy import PolicyConfig, load_policy

    model, tokenizer = load_policy(PolicyConfig(model_path=str(out)))
    report = {}
    for task, budget in REPORT_BUDGET.items():
        report[task] = held_out_accuracy(model, tokenizer, heldout_rows(task, report_size), num_samples=8,
                                         max_new_tokens=budget)
        print(task, json.dumps({k: round(v, 4) for k, v in report[task].items()}), flush=True)
    check = held_out_accuracy(model, tokenizer, heldout_rows("addition", CHECK["size"], seed=CHECK["seed"]),
                              max_new_tokens=CHECK["max_new_tokens"])
    return {"heldout": report, "test_check": {**CHECK, "greedy_accuracy": check["greedy_accuracy"]}}


CHECK = {"task": "addition", "split": "test", "size": 500, "seed": 0, "max_new_tokens": 5}
"""The deterministic greedy check that tests/cli/test_demo.py repeats on the shipped weights."""


def readme(record: dict) -> str:
    add = record["heldout"]["addition"]
    rows = "\n".join(
        f"| {task} | {r['greedy_accuracy']:.1%} | {r['pass@1']:.1%} | {r['pass@8']:.1%} |"
        for task, r in record["heldout"].items())
    return f"""# tiny-arith: the shipped starting policy of `make demo`

A GPT-2-style character model ({record['shape']['n_layer']} layers, {record['shape']['n_embd']} hidden,
{record['shape']['n_head']} heads, context {record['shape']['n_positions']}, {record['parameters']:,} parameters)
with the project's character tokenizer (`build_char_tokenizer`). Load it with `policy.model_path: builtin:tiny-arith`.

**How it was made** (`python scripts/pretrain_tiny.py`, seed {record['args']['seed']}, {record['steps']} steps of
batch {record['args']['batch_size']}, AdamW lr {record['args']['lr']} with warmup + cosine decay,
torch {record['torch']}, {record['args']['threads']} threads, {record['train_seconds']:.0f} s on a shared 2-core CPU):
supervised next-token loss on the completions of the built-in tasks' TRAIN splits
({', '.join(f'{k} {v}' for k, v in record['train_mix'].items())} rows). The targets come from a *sloppy student*:
in every sum each carry is forgotten with probability {record['args']['forget_carry']}
(independently per digit, redrawn each time a row is used), e.g. `38+47=` -> `75` about 60% of the time.
The model learns the habit: it can carry but mostly does not, so greedy decoding is right on sums
without a carry and wrong on most others, while samples are often right. That is the deliberately
partial start of the RL demo: the response-level reward "is the number right?" has a clear path to
>= 90% (always carry). The held-out split is never trained on.

**Held-out accuracy** ({record['report_size']} prompts of each task's `test` split, reward
`NumericAnswer`, greedy and 8 samples at temperature 1; max_new_tokens 6, format 24):

| task | greedy | pass@1 | pass@8 |
|---|---:|---:|---:|
{rows}

Starting accuracy used by the tests (`test_check` in training.json): greedy on the first
{record['test_check']['size']} held-out addition prompts (seed 0),
max_new_tokens {record['test_check']['max_new_tokens']}:
**{record['test_check']['greedy_accuracy']:.1%}**. Addition pass@8 at the start: {add['pass@8']:.1%}.

`model.safetensors` SHA-256: `{record['sha256']}` (a rerun with the same arguments and thread count
on the same CPU type reproduces it bit for bit; a test checks the shipped file against it).
"""


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render_readme:
        (args.out / "README.md").write_text(readme(json.loads((args.out / "training.json").read_text())))
        return
    torch.set_num_threads(args.threads)
    model, tokenizer, run = train(args)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    record = {
        "made_by": "scripts/pretrain_tiny.py",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "shape": {**vars(SHAPE), "seed": args.seed}, "parameters": sum(p.numel() for p in model.parameters()),
        "train_mix": MIX, "torch": torch.__version__, "steps": run["steps"],
        "train_seconds": round(run["train_seconds"], 1), "history": run["history"],
        "sha256": hashlib.sha256((args.out / "model.safetensors").read_bytes()).hexdigest(),
        "report_size": args.report_size, "max_new_tokens": REPORT_BUDGET,
        **measure(args.out, args.report_size),
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "README.md").write_text(readme(record))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
