"""Thin wrapper: see grn.entrypoints.eval."""
from grn.entrypoints.eval import main

if __name__ == "__main__":
    main()
