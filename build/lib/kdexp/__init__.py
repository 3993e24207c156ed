"""kdexp: a knowledge-distillation experiment platform (Lightning + Hydra + Optuna + MLflow)."""

__version__ = "0.1.0"
