"""modtrans: modality translation between embedding spaces."""

__version__ = "0.1.0"
