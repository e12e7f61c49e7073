"""An index run: walk the roots, recognise each file, hash, encode through the early-exit pipeline,
write rows and manifest, prune; rebuild; stats."""
