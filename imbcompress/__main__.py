"""``python -m imbcompress`` is the ``imbcompress`` command."""

import sys

from imbcompress.cli import main

sys.exit(main())
