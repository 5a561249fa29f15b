"""``python -m pertattack`` is the ``pertattack`` command (``torchrun ... -m pertattack evaluate ...`` needs it)."""

from __future__ import annotations

import os
import sys

from .cli import main

if __name__ == "__main__":
    if "TORCHELASTIC_RUN_ID" in os.environ:  # under torchrun: an uncaught error's traceback goes to its error file
        from torch.distributed.elastic.multiprocessing.errors import record

        sys.exit(record(main)())
    sys.exit(main())
