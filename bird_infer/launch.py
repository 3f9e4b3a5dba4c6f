"""The ``bird-infer`` entry point: the command line, started so that a machine out of memory at start-up (``ulimit
-v``) gets one error line instead of a traceback from deep in an import."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from bird_infer.cli import main as cli_main
    except MemoryError:
        sys.stderr.write("bird-infer: error: out of memory while starting (free memory, or raise ulimit -v)\n")
        return 2
    except ImportError as e:  # a native library that could not be mapped under the limit
        text = str(e).lower()
        if "memory" not in text and "failed to map segment" not in text:
            raise
        sys.stderr.write(f"bird-infer: error: out of memory while starting ({e}); free memory or raise ulimit -v\n")
        return 2
    return cli_main()
