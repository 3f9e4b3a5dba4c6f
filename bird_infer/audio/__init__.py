"""Floor 1, audio: finding recordings under ``--audio``, decoding them block by block into row windows at each
member's rate, and the exact numpy log-mel front-end.

Imports: :mod:`bird_infer.contract`. Main entry points: :func:`~bird_infer.audio.files.find_audio_entries`,
:class:`~bird_infer.audio.decode.RowReader`, :class:`~bird_infer.audio.logmel.LogMelFrontend`.
"""
