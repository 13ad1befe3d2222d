import sys

from sparkler.cli import main

sys.exit(main())
