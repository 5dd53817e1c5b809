"""The TRL integration: ``train_sequence`` runs a list of tasks through ``SFTTrainer``."""
