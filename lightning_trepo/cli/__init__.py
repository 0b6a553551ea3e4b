"""The console: ``lightning-trepo`` (:mod:`~lightning_trepo.cli.main`), the fit/validate CLI it builds
(:mod:`~lightning_trepo.cli.fit`), its short error reports (:mod:`~lightning_trepo.cli.error_report`) and
``make demo`` (:mod:`~lightning_trepo.cli.demo`)."""
