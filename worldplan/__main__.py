"""``python -m worldplan <task> <stage> ...``: the same as the ``worldplan`` command."""

from worldplan.experiments.cli import main

if __name__ == "__main__":
    main()
