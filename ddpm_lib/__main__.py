"""`python -m ddpm_lib ...` (and `torchrun -m ddpm_lib train ...`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
