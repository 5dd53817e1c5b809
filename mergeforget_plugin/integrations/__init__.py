"""Integrations with training frameworks that are not a plain transformers ``Trainer`` callback."""
