//! The ports: what the core needs from the outside, in the core's own words. Each is a trait an
//! adapter implements (`crate::telegram`, `crate::discord` for [`chat::Chat`], `crate::backend::dashscope` for
//! [`model::EditService`], `crate::store::sqlite` for [`store::Store`]); the core never
//! names a platform's types.

pub mod chat;
pub mod model;
pub mod store;

use std::future::Future;
use std::pin::Pin;

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
