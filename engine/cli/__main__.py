"""`python -m xmodal.engine.cli` runs the `xmodal` command."""
import sys

from xmodal.engine.cli.main import main

sys.exit(main())
