from .command import cli

cli()
