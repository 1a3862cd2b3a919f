"""`python -m live run|executor|kill|status` (see live/cli)."""

import sys

from live.cli.__main__ import main

sys.exit(main())
