"""
``python -m sync_lab.pieces_bench``: how long serializing and deserializing hold
the write lock, kept at this name for the command; the code is
:mod:`sync_lab.bench.pieces_bench`.
"""

from sync_lab.bench.pieces_bench import main

if __name__ == "__main__":
    main()
