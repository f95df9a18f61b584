"""``python -m node.client.cli``: the same program as the ``form`` console script."""

import sys

from node.client.cli import main

sys.exit(main())
