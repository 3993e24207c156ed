"""Where a run's record lives: MLflow conventions for runs, tags and lineage (`runs`), tracking and Optuna
stores — SQLite, PostgreSQL, servers — and their locks (`stores`), secrets kept out of logs and files
(`redact`, `redact_hydra`), the one progress line per epoch (`progress`), MLflow Models of students
(`models`) and the run summary table (`summary`)."""
