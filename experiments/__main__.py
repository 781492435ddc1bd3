"""``python -m experiments NAME [args]``: run a paper script by its stable name; ``--list`` names them.
A refusal is one ``error:`` line with exit status 2 (as ``superscopes explain``)."""

import sys

from experiments import list_text

from experiments import run

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help", "--list"):
        print(list_text() if args[:1] == ["--list"] else __doc__)
        sys.exit(0)
    from superscopes_nn.output.refusal import guarded

    sys.exit(guarded(lambda: run(args[0], args[1:])))  # a refusal: one error: line, status 2
