"""The only door to MLflow: one parent run per study, one nested run per Optuna trial.

Imports data (dataset lineage) and the ground modules.
"""
