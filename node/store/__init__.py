"""The node's durable state: the op log and snapshots in one SQLite file (see ``sqlite.py``)."""

from node.store.sqlite import (
    APPLICATION_ID,
    DB_FILENAME,
    SCHEMA_VERSION,
    CorruptStore,
    ForeignStore,
    NewerFormat,
    Store,
    StoreError,
    StoreMissing,
    WrongNetwork,
)

__all__ = [
    "APPLICATION_ID",
    "DB_FILENAME",
    "SCHEMA_VERSION",
    "CorruptStore",
    "ForeignStore",
    "NewerFormat",
    "Store",
    "StoreError",
    "StoreMissing",
    "WrongNetwork",
]
