"""``python -m verifier.records DB [NICE]``: the SQLite writer child (:mod:`.child`)."""

from .child import main

main()
