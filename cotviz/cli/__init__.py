"""The ``cotviz`` command line: a thin Typer layer over the library, one module per command.

Command modules import torch and the library lazily (inside the command function), so that
``cotviz --help`` returns without importing torch.
"""
