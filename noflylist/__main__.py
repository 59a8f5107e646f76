"""``python -m noflylist`` runs the same command line as the ``noflylist`` script."""

import sys

from noflylist.cli import main

sys.exit(main())
