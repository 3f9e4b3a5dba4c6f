"""Floor 5, jobs: the two main jobs as one library call each, both consuming the run's outcome stream in one
loop: :func:`~bird_infer.jobs.predict.run_predict` (soundscapes -> submission CSV) and
:func:`~bird_infer.jobs.detect.run_detect` (field recordings -> tables per file, resumable).

Imports: every floor below (outputs, run, runtime, audio, contract); never tools, kaggle or the CLI.
"""
