"""``python -m kdlib``: see :mod:`kdlib.cli`."""

import sys

from kdlib.cli import main

sys.exit(main())
