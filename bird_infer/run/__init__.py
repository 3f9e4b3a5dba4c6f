"""Floor 3, run: files in, outcomes out. The run's options, the per-file predictor and the worker around it,
segments of split files and their assembly, post-processing, the task book, the process pool and Dask engines,
the deadline guard, progress, the plan that checks everything before any audio is read, and the steps that need
every row of the run (a rank blend).

Imports: :mod:`bird_infer.runtime`, :mod:`bird_infer.audio`, :mod:`bird_infer.contract`; inside, each module
only the ones below it (``plan`` | ``runwide`` > ``engine`` > ``pool`` | ``dask_engine`` > ``worker`` > ``book`` >
``predictor`` > ``segments`` > ``postprocess`` | ``outcomes`` | ``deadline`` | ``progress`` > ``options``; the
contract in ``pyproject.toml`` is the reference). Main entry points: :func:`~bird_infer.run.plan.plan_run`,
:func:`~bird_infer.run.plan.iter_outcomes`, :func:`~bird_infer.run.engine.stream_files`,
:class:`~bird_infer.run.options.RunOptions`, :class:`~bird_infer.run.predictor.FilePredictor`.
"""
