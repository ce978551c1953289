//! Durable stores behind [`crate::core::quota::Ledger`]. SQLite is embedded; a Redis store for
//! several replicas can be added here without touching callers.

pub mod sqlite;

use std::path::Path;
use std::sync::Arc;

use crate::core::quota::{Ledger, StoreError};

/// Opens the store named by `quota.database`.
pub fn open(database: &str) -> Result<Arc<dyn Ledger>, StoreError> {
    if database.starts_with("redis://") {
        return Err(StoreError(
            "the Redis store is not built into this version".into(),
        ));
    }
    Ok(Arc::new(sqlite::SqliteLedger::open(Path::new(database))?))
}
