"""Thin wrapper: see grn.entrypoints.train."""
from grn.entrypoints.train import main

if __name__ == "__main__":
    main()
