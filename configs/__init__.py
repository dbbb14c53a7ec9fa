"""Hyperparameters per environment family, as YAML files shipped with the package (see ``agents.config``)."""
