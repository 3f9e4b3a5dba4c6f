"""Floor 4, outputs: what a run writes, always atomically. The submission CSV and its error report, the place
they go (checked first, a fallback last), names made unique, BirdNET-Analyzer's field tables built from records,
plots, the run record that lets ``detect`` resume, and the competitions' metrics.

Imports: :mod:`bird_infer.run` (outcomes), :mod:`bird_infer.audio` (plots), :mod:`bird_infer.contract`. Main entry
points: :func:`~bird_infer.outputs.submission.build_submission`, :func:`~bird_infer.outputs.report.settle`,
:func:`~bird_infer.outputs.tables.table_rows`, :class:`~bird_infer.outputs.runrecord.RunRecord`.
"""
