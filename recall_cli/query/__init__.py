"""Answering queries: the query options and language, the search (vector ranking plus refinement),
and the warm query server."""
