"""`python -m app` is `dqe-cir`."""

import sys

from app.cli import main

sys.exit(main())
