"""`python -m broadcast_interfaces.cli`: the `broadcast` console script."""

import sys

from broadcast_interfaces.cli import main

sys.exit(main())
