"""Tiny world: the paper's three claims reproduced end to end on one CPU (see ``study``)."""
