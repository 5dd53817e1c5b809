"""The adapters that fit the engine into a training framework.

``callback`` is a transformers ``TrainerCallback`` any ``Trainer`` can carry; ``trl`` runs a list of
tasks through TRL's ``SFTTrainer``; ``axolotl`` is the plugin, the recipe and the runner. The TRL
and Axolotl sides never import each other.
"""
