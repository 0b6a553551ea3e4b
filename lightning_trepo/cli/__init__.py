"""The console: ``lightning-trepo`` (:mod:`~lightning_trepo.cli.main`), its short error reports
(:mod:`~lightning_trepo.cli.error_report`) and ``make demo`` (:mod:`~lightning_trepo.cli.demo`)."""
