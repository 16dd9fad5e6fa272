"""``python -m busdx``: the command line, also as torchrun runs it (``torchrun -m busdx train ...``)."""

import sys

from busdx.cli.main import main

sys.exit(main())
