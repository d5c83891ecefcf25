import sys

from clients.cli import main
from clients.demo import run_demo

sys.exit(main(run_demo=run_demo))
