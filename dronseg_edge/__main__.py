"""``python -m dronseg_edge`` (also what ``torchrun -m dronseg_edge train ...`` runs)."""

from dronseg_edge.cli import main

if __name__ == "__main__":
    main()
