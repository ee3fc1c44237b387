"""`xmodal` with the fake encoder registered, for tests that need a real child process (SIGKILL, SIGINT):

    python tests/fake_xmodal.py index PHOTOS --library LIB --model fake-colour
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_encoders import ColourEncoder  # noqa: E402

from xmodal.indexer.models.encoders import register_encoder  # noqa: E402

register_encoder("fake-colour", ColourEncoder)

if __name__ == "__main__":
    from xmodal.engine.cli.main import main

    sys.exit(main())
