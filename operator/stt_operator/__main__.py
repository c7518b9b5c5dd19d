import sys

from stt_operator.main import main

sys.exit(main())
