"""The early-exit method, written once against the layered-encoder interface: exit points, policies
and the predictor at index time, healing, the INT4 activation cache, and refinement at query
time."""
