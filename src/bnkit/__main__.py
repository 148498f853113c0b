"""``python -m bnkit`` runs the command line."""

import sys

from bnkit.cli import main

sys.exit(main())
