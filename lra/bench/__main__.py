import sys

from ..cli import call
from .study import main

sys.exit(call(main))
