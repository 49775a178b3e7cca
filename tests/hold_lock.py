"""Holds a workdir's lock for two minutes, as a running launch would (for the lock tests).

python -m tests.hold_lock WORKDIR
"""

import sys
import time

from research.runtime import workdir

if __name__ == "__main__":
    lock = workdir.Lock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
