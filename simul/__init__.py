"""simul: see shared/ARCHITECTURE.md; filled in by its own issue."""
