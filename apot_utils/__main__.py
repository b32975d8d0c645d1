"""``python -m apot_utils``: the command line (:mod:`apot_utils.cli`)."""
import sys

from .cli import main

sys.exit(main())
