"""`python -m robopolicy.cli VERB ...` (what torchrun and the tests run)."""
import sys

from robopolicy.cli import main

sys.exit(main())
