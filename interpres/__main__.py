import sys

from interpres.cli import main

sys.exit(main())
