import sys

from samplax.cli import main

sys.exit(main())
