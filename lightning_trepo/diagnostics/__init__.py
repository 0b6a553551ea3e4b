"""Diagnostics of the estimators on real rollouts: ``lightning-trepo measure-variance``
(:mod:`lightning_trepo.diagnostics.variance`, statistics in :mod:`lightning_trepo.diagnostics.stats`)."""
