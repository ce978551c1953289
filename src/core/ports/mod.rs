//! The ports: what the core needs from the outside, in the core's own words. Each is a trait an
//! adapter implements (`crate::telegram`, `crate::discord` for [`chat::Chat`], `crate::store::sqlite` for
//! [`store::Store`]); the core never
//! names a platform's types.

pub mod chat;
pub mod store;
