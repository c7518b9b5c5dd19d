import sys

from voxfleet.cli import main

sys.exit(main())
