"""`python -m sdvar_core.bench <sub-command> ...`: see `cli`."""
from .cli import main

main()
