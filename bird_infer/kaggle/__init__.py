"""Floor 5, Kaggle: the BirdCLEF editions as data (species, test files, time limits, metrics). Finding the
notebook's inputs stays in ``kaggle_kernel.py``: it runs before bird_infer can be imported (it installs the
bundle's wheels and puts the package on the path).

Imports: contract only. Main entry points: :data:`~bird_infer.kaggle.editions.EDITIONS`,
:func:`~bird_infer.kaggle.editions.edition_for`.
"""
