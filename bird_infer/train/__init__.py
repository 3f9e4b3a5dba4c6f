"""The seed's training recipe (``[train]`` extra: torch, timm, librosa, scikit-learn).

Never imported by inference. Modules: :mod:`~bird_infer.train.data` (layouts, fold split, clips),
:mod:`~bird_infer.train.augment`, :mod:`~bird_infer.train.recipe` (loss, loop, checkpoints),
:mod:`~bird_infer.train.synth` (the synthetic call corpus; numpy only).
"""
