"""Runners for every artifact kind behind one interface (see ``base.Backend``)."""
