"""``python -m amat_hooks.cli``: the ``amat`` console script."""
import sys

from amat_hooks.cli import main

sys.exit(main())
