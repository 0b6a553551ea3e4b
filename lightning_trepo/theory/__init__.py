"""Exact check, on an enumerable toy token MDP, of which gradient estimators are unbiased.

``python -m lightning_trepo.theory`` / ``lightning-trepo verify-estimators`` print the table.
https://arxiv.org/abs/2506.02553
"""
from lightning_trepo.theory.estimators import Draws, Moments, moments
from lightning_trepo.theory.mdp import ExactSolution, ToyMDP, make_toy_mdp, solve
from lightning_trepo.theory.verify import Config, Row, evaluate, main

__all__ = [
    "Config",
    "Draws",
    "ExactSolution",
    "Moments",
    "Row",
    "ToyMDP",
    "evaluate",
    "main",
    "make_toy_mdp",
    "moments",
    "solve",
]
