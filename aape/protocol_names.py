"""The evaluation protocols by name (torch-free: the CLI offers them before importing torch)."""

PROTOCOLS = ("few-shot", "base-to-new", "cross-dataset", "domain-generalisation")
# The protocols that test on other datasets' classes.
TRANSFER_PROTOCOLS = ("cross-dataset", "domain-generalisation")
