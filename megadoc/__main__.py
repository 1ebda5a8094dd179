import sys

from megadoc.cli import main

if __name__ == "__main__":  # engines started with multiprocessing's spawn re-import this module as __mp_main__
    sys.exit(main())
