//! One memory budget for all image decoding in the process. Each fit reserves what its decode,
//! conversions and resize will hold before it allocates any of it, and waits while other fits
//! hold the rest; a picture that alone needs more than the whole budget is refused. So four
//! users sending decompression bombs at once cost the budget, not four times it.

use std::sync::{Condvar, Mutex};

/// Bytes of decoding memory shared by every fit that holds this (through `FitLimits`).
#[derive(Debug)]
pub struct DecodeBudget {
    total: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// A reservation; gives its bytes back when dropped.
#[derive(Debug)]
pub struct Reserved<'a> {
    budget: &'a DecodeBudget,
    bytes: u64,
}

impl DecodeBudget {
    pub fn new(total: u64) -> Self {
        Self {
            total,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// The whole budget.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes reserved right now.
    pub fn in_use(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `bytes`, blocking (this runs on a blocking thread) until they are free; `None`
    /// when they never can be (more than the whole budget).
    pub fn reserve(&self, bytes: u64) -> Option<Reserved<'_>> {
        if bytes > self.total {
            return None;
        }
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used + bytes > self.total {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += bytes;
        Some(Reserved {
            budget: self,
            bytes,
        })
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(self.bytes);
        self.budget.freed.notify_all();
    }
}
