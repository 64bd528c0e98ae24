"""Thin wrapper: see grn.entrypoints.sample."""
from grn.entrypoints.sample import main

if __name__ == "__main__":
    main()
