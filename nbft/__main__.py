import sys

from nbft.cli import main

sys.exit(main())
