"""``python -m lightning_trepo.theory``: print the estimator bias/variance table."""
import sys

from lightning_trepo.theory.verify import main

if __name__ == "__main__":
    sys.exit(main())
