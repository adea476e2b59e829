"""Model engines behind one interface (`base.Engine`): `sim` (default) and `hf`."""
