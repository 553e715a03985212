"""Moved to `app.search.soup` (the greedy soup shares the merge search's in-memory evaluator);
kept so ``from app.soup import greedy_soup`` keeps working."""

from app.search.soup import SoupResult, SoupStep, greedy_soup, soup_recipe

__all__ = ["SoupResult", "SoupStep", "greedy_soup", "soup_recipe"]
