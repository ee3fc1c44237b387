"""`python -m xmodal.engine.cli` runs the `xmodal` command."""
import sys

from xmodal.engine.cli import main

sys.exit(main())
