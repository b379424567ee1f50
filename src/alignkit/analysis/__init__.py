"""Token-distribution-shift analysis: what alignment changes, token by token."""
