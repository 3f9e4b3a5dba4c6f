"""``python -m bird_infer ...`` is ``bird-infer ...``."""

import sys

from bird_infer.cli import main

sys.exit(main())
