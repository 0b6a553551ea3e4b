"""``lightning-trepo verify-estimators``: which gradient estimators are unbiased, on an exact toy MDP.

For every estimator the exact expectation E[ĝ] and the exact variance tr Cov(ĝ) are compared with
the exact policy gradient ∇J (autograd of J = Σ_W π(W) RM(W)). Columns: ``n`` responses per draw,
``rel.bias`` = ‖E ĝ - ∇J‖ / ‖∇J‖, ``scale`` = <E ĝ, ∇J> / ‖∇J‖², ``variance`` = tr Cov(ĝ) of one draw,
``verdict`` measured, ``claim`` what the paper / design says, ``ok`` whether they agree.
https://arxiv.org/abs/2506.02553
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

from lightning_trepo.algorithms.advantages import grpo_advantages, rloo_advantages
from lightning_trepo.theory import estimators as est
from lightning_trepo.theory.mdp import ExactSolution, make_toy_mdp, solve

EXACT_TOL = 1e-10  # "exactly unbiased" / "exactly proportional": float64 round-off only
BIAS_TOL = 1e-3  # "clearly biased"


@dataclass(frozen=True)
class Row:
    key: str
    name: str
    claim: str  # "unbiased" | "biased" | "scaled <c>" | "proportional" (E ĝ = c·∇J for some c > 0)
    samples: int
    rel_bias: float
    scale: float
    residual: float  # ‖E ĝ - scale·∇J‖ / ‖∇J‖: 0 when E ĝ ∝ ∇J
    variance: float
    target_residual: float = float("nan")  # "reweighted w" claims: ‖E ĝ - Σ_t (1 + w P(s<t)) g_t‖ / ‖that‖

    @property
    def verdict(self) -> str:
        if self.claim.startswith("reweighted") and self.target_residual < EXACT_TOL:
            return self.claim
        if self.rel_bias < EXACT_TOL:
            return "unbiased"
        if self.residual < EXACT_TOL:
            return f"scaled {self.scale:.6f}"
        return "biased" if self.rel_bias > BIAS_TOL else "unclear"

    @property
    def ok(self) -> bool:
        if self.claim.startswith("scaled"):
            expected = float(self.claim.split()[1])
            return self.residual < EXACT_TOL and abs(self.scale - expected) < EXACT_TOL
        if self.claim.startswith("reweighted"):
            return self.target_residual < EXACT_TOL and self.rel_bias > BIAS_TOL
        if self.claim == "proportional":
            return self.residual < EXACT_TOL and self.scale > 0
        return self.verdict == self.claim


@dataclass(frozen=True)
class Config:
    """The toy instance and estimator sizes (``main`` requires max_len >= 4 and M <= max_len - 2)."""

    seed: int = 0
    vocab_size: int = 2
    max_len: int = 4
    group_size: int = 3
    num_anchors: int = 1
    continuations: int = 2
    gamma: float = 0.9
    marker: int = 0


def _specs(cfg: Config) -> list[tuple[str, str, str, Callable[[ExactSolution], est.Draws]]]:
    """(key, label, claim, builder) per estimator."""
    g, m, k = cfg.group_size, cfg.num_anchors, cfg.continuations

    def grpo(scale: str) -> Callable:
        return lambda r, size: grpo_advantages(r, size, scale=scale)

    return [
        ("reinforce", "REINFORCE, A = RM(W) (Thm 1)", "unbiased", est.reinforce),
        (
            "reinforce_len",
            "REINFORCE, seq_mean_token_mean (1/T)",
            "biased",
            lambda e: est.reinforce(e, "seq_mean_token_mean"),
        ),
        (
            "discounted",
            f"REINFORCE, discounted γ^(T-t), γ={cfg.gamma}",
            "biased",
            lambda e: est.discounted_reinforce(e, cfg.gamma),
        ),
        ("remax", "ReMax, greedy baseline", "unbiased", est.remax),
        ("rloo", f"RLOO, G={g}", "unbiased", lambda e: est.group_estimator(e, g, rloo_advantages)),
        (
            "grpo_none",
            f"GRPO scale=none, G={g}",
            f"scaled {(g - 1) / g!r}",
            lambda e: est.group_estimator(e, g, grpo("none")),
        ),
        ("grpo_group", f"GRPO scale=group (std), G={g}", "biased", lambda e: est.group_estimator(e, g, grpo("group"))),
        ("reinforce_pp", "REINFORCE++ (batch-whitened returns), B=2", "biased", lambda e: est.reinforce_pp(e, 2)),
        (
            "reinforce_pp_baseline",
            "REINFORCE++-baseline, one group G=2 (= REINFORCE++)",
            "biased",
            lambda e: est.reinforce_pp(e, 2, baseline=True),
        ),
        (
            "rloo_dynamic",
            "RLOO + DAPO dynamic sampling, G=2",
            "proportional",
            lambda e: est.dynamic_sampling(e, est.group_estimator(e, 2, rloo_advantages)),
        ),
        ("thm2", "Thm 2: U(t) - U(t-1), exact U", "unbiased", est.theorem2),
        ("trepo", f"TRePO fixed offsets M={m}, exact U", "unbiased", lambda e: est.fixed_anchors(e, m)),
        ("trepo_mc", f"TRePO fixed offsets M={m}, K={k} MC", "unbiased", lambda e: est.fixed_anchors(e, m, k)),
        (
            "trepo_boundary",
            f"TRePO boundary anchors M={m}",
            "unbiased",
            lambda e: est.boundary_anchors(e, cfg.marker, m),
        ),
        ("trepo_loo", f"TRePO M={m}, Û(0) = LOO, G=2", "unbiased", lambda e: est.trepo_leave_one_out(e, 2, m)),
        ("trepo_half", "TRePO anchor s = T // 2 (not stop. time)", "biased", est.final_length_anchor),
        ("trepo_gated", f"TRePO gate=mixed (siblings), G=3, M={m}", "unbiased", lambda e: est.gated_trepo(e, 3, m)),
        ("trepo_unsolved", f"TRePO gate=unsolved (siblings), G=3, M={m}", "unbiased",
         lambda e: est.unsolved_trepo(e, 3, m)),
        (
            "trepo_gated_scaled",
            f"TRePO gate=mixed + group 1/std, G=3, M={m}",
            "biased",
            lambda e: est.gated_trepo(e, 3, m, scale=True),
        ),
        ("trepo_tree", "TRePO + trained conts, M=1, K=1, w=1", "reweighted 1.0",
         lambda e: est.tree_trepo(e, 1.0)),
        (
            "trepo_interp",
            f"TRePO M={m}, U interpolated linearly",
            "biased",
            lambda e: est.fixed_anchors(e, m, interpolate=True),
        ),
    ]


def evaluate(cfg: Config = Config()) -> tuple[ExactSolution, list[Row]]:
    """Solve the toy MDP of ``cfg`` and measure every estimator exactly."""
    exact = solve(make_toy_mdp(cfg.vocab_size, cfg.max_len, cfg.seed))
    norm2 = float(exact.grad @ exact.grad)
    rows = []
    for key, name, claim, build in _specs(cfg):
        draws = build(exact)
        mom = est.moments(exact, draws)
        scale = float(mom.mean @ exact.grad) / norm2
        target = est.tree_target(exact, float(claim.split()[1])) if claim.startswith("reweighted") else None
        rows.append(Row(
            key=key, name=name, claim=claim, samples=draws.index.shape[1],
            rel_bias=float((mom.mean - exact.grad).norm()) / norm2**0.5,
            scale=scale, residual=float((mom.mean - scale * exact.grad).norm()) / norm2**0.5,
            variance=mom.variance,
            target_residual=float((mom.mean - target).norm() / target.norm()) if target is not None else float("nan"),
        ))
    return exact, rows


def variance_checks(rows: list[Row]) -> list[tuple[str, bool]]:
    """The variance orderings claimed by Theorem 2 and TRePO, as (statement, holds)."""
    var = {r.key: r.variance for r in rows}
    return [
        ("Var(Thm 2) < Var(TRePO exact U) < Var(REINFORCE)", var["thm2"] < var["trepo"] < var["reinforce"]),
        ("Var(TRePO exact U) < Var(TRePO K-sample MC)", var["trepo"] < var["trepo_mc"]),
    ]


def format_table(exact: ExactSolution, rows: list[Row], cfg: Config) -> str:
    head = (
        f"Toy token MDP: vocab {cfg.vocab_size} + EOS, max_len {cfg.max_len}, seed {cfg.seed}: "
        f"{exact.prob.numel()} responses, {exact.grad.numel()} parameters, J = {float(exact.objective):.6f}, "
        f"|∇J| = {float(exact.grad.norm()):.6f}"
    )
    lines = [
        head,
        "",
        f"{'estimator':<42} {'n':>2} {'rel.bias':>9} {'scale':>9} {'variance':>9}  {'verdict':<17} {'claim':<17} ok",
    ]
    for r in rows:
        lines.append(
            f"{r.name:<42} {r.samples:>2} {r.rel_bias:9.2e} {r.scale:9.6f} {r.variance:9.4f}  "
            f"{r.verdict:<17} {_short(r.claim):<17} {'✓' if r.ok else '✗'}"
        )
    lines.append("")
    lines += [f"{stmt:<60} {'✓' if holds else '✗'}" for stmt, holds in variance_checks(rows)]
    return "\n".join(lines)


def _short(claim: str) -> str:
    if claim.startswith("reweighted"):
        return "reweighted"
    return f"scaled {float(claim.split()[1]):.6f}" if claim.startswith("scaled") else claim


def main(argv: list[str] | None = None) -> int:
    """Print the estimator table; exit status 1 if any claim fails on this instance."""
    parser = argparse.ArgumentParser(prog="lightning-trepo verify-estimators", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the toy MDP's logits and token rewards")
    parser.add_argument("--max-len", type=int, default=4, help="maximum response length (>= 4)")
    parser.add_argument("--vocab-size", type=int, default=2, help="ordinary tokens besides EOS")
    parser.add_argument("--group-size", type=int, default=3, help="G for RLOO / GRPO (2 or 3 keeps it fast)")
    parser.add_argument("--num-anchors", type=int, default=1, help="TRePO interior anchors M (<= max_len - 2)")
    parser.add_argument("--continuations", type=int, default=2, help="TRePO continuations K per anchor")
    parser.add_argument("--gamma", type=float, default=0.9, help="discount of the biased discounted line")
    args = parser.parse_args(argv)
    if (
        args.max_len < 4
        or not 1 <= args.num_anchors <= args.max_len - 2
        or args.group_size < 2
        or args.continuations < 1
    ):
        # max_len <= 3 makes T // 2 = min(1, T) a stopping time, and M = max_len - 1 makes every
        # fixed-offset TRePO variant coincide with Theorem 2: the "biased" and "<" claims need room.
        parser.error("need max_len >= 4, 1 <= num_anchors <= max_len - 2, group_size >= 2, continuations >= 1")
    cfg = Config(
        args.seed, args.vocab_size, args.max_len, args.group_size, args.num_anchors, args.continuations, args.gamma
    )
    start = time.perf_counter()
    exact, rows = evaluate(cfg)
    print(format_table(exact, rows, cfg))
    print(f"\n(exact enumeration, float64, {time.perf_counter() - start:.2f} s)")
    return 0 if all(r.ok for r in rows) and all(h for _, h in variance_checks(rows)) else 1
