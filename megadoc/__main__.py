import sys

from megadoc.cli import main

sys.exit(main())
