"""`python -m scheduler`: see scheduler/service.py."""

import sys

from scheduler.service import main

sys.exit(main())
