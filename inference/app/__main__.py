import sys

from .command import cli

try:
    cli()
except KeyboardInterrupt:  # the app stopped cleanly; as `clipada app` reports Ctrl-C (one line, exit status 130)
    print("\nclipada app: interrupted (Ctrl-C)", file=sys.stderr)
    raise SystemExit(130) from None
