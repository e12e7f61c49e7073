"""`recall watch`: follow file events, debounce them into batches for the indexer, and spend idle
time on compaction and refinement."""
