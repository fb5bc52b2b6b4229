"""`python -m gensys` is the `gensys` command."""

import sys

from gensys.cli import main

sys.exit(main())
