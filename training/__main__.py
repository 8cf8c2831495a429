"""`python -m training train ...`, and under torchrun the several-GPU entry:

    torchrun --nproc-per-node N -m training train --recipe cirr-blip2 --pretrained DIR
"""

import sys

from training.cli import main

sys.exit(main())
