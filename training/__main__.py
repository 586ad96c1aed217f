"""`python -m training`: the `clipada` command line (see `training.cli`)."""

from training.cli import main

main()
