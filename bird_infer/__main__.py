"""``python -m bird_infer ...`` is ``bird-infer ...``."""

import sys

from bird_infer.launch import main

sys.exit(main())
