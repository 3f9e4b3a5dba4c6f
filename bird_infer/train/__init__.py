"""The seed's training recipe (``[train]`` extra: torch, timm, librosa, scikit-learn), beside the stack: never
imported by inference (an import-linter contract says so).

Imports: :mod:`bird_infer.nn`, and the floors it shares with inference (contract, audio, outputs' metrics).
Modules: :mod:`~bird_infer.train.data` (layouts, fold split, clips), :mod:`~bird_infer.train.augment`,
:mod:`~bird_infer.train.recipe` (loss, loop, checkpoints), :mod:`~bird_infer.train.run` (folds end to end).
The synthetic call corpus is a tool: :mod:`bird_infer.tools.synth`.
"""
