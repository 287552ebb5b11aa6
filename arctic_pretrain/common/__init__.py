"""The shared base every stage may import: one config helper, atomic file writes, token-count units."""
