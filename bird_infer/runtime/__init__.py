"""Floor 2, runtime: running the models. Sessions (ONNX Runtime, OpenVINO) behind one ``Runner`` callable,
BirdNET's TFLite runner, the bundle's ensemble (folds per member, members per label), the checks that load and
run every fold before any audio, the accuracy guard and ``--precision auto``, and the machine's facts.

Imports: :mod:`bird_infer.audio`, :mod:`bird_infer.contract`. Main entry points:
:class:`~bird_infer.runtime.ensemble.BundleModel`, :class:`~bird_infer.runtime.sessions.SessionSettings`,
:func:`~bird_infer.runtime.checks.check_models`, :func:`~bird_infer.runtime.precision.choose_precision`.
"""
