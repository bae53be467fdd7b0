"""``python -m cotviz`` runs the command-line tool."""

from cotviz.cli.app import main

main()
