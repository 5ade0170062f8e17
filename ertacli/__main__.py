"""`python -m ertacli`."""

from .cli import main

main()
