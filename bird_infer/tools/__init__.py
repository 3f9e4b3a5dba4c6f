"""Floor 5, tools beside the jobs: ``bird-infer bundle`` (the Kaggle dataset), ``birdnet-bundle``, ``quantize``
(int8 by NNCF), the synthetic call corpus and the example soundscape.

Imports: outputs, run, runtime, audio, contract; never jobs, kaggle or the CLI. Main entry points:
:func:`~bird_infer.tools.bundle.build_bundle`, :func:`~bird_infer.tools.birdnet_bundle.write_bundle`,
:func:`~bird_infer.tools.quantize.quantize_bundle`, :func:`~bird_infer.tools.synth.write_corpus`.
"""
