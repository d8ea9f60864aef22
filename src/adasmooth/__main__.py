"""``python -m adasmooth ...`` (what ``torchrun -m adasmooth ...`` runs on each rank)."""

import sys

from .cli import main

sys.exit(main())
