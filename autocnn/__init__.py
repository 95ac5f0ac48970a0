"""autocnn: search CNN architectures and training settings with Optuna, tracked in MLflow."""

__version__ = "0.1.0"
