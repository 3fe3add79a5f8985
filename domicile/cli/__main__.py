"""`python -m domicile.cli` is the `domicile` command."""

import sys

from domicile.cli.main import main

sys.exit(main())
