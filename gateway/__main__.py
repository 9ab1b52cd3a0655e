"""``python -m gateway`` runs the ``missive`` command line."""

import sys

from gateway.cli import main

sys.exit(main())
