"""Op implementations, one package per backend (see scratchnet.backend)."""
