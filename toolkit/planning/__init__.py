"""Planning: settings derived from a data fingerprint (nnU-Net's fingerprint -> plans)."""
