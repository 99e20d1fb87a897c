"""``python -m amat_hooks.cli``: the ``amat`` console script."""
import sys

from . import main

sys.exit(main())
