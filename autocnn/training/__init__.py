"""One trial's training: configuration, assembly, augmentation, cached features, the loop, costs.

Imports spec, data and models; knows neither Optuna nor MLflow.
"""
