import sys

from tinylib.cli import main

sys.exit(main())
