"""`python -m bot` runs the countersign CLI."""

from bot.cli import main

# Guarded: the risk workers are spawned processes, and they import the main module again.
if __name__ == "__main__":
    main()
