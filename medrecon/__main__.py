"""``python -m medrecon``: the ``medrecon`` command without its console script (e.g. from a
source tree on ``PYTHONPATH``)."""

from medrecon.cli.main import main

if __name__ == "__main__":
    main()
