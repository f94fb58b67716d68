"""`python -m bot` runs the countersign CLI."""

from bot.cli import main

main()
