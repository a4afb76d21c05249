"""``python -m dagger.cli``: the ``dagger`` command."""

from dagger.cli import main

main()
