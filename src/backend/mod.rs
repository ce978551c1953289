//! Image-edit backends. DashScope is the one implemented; its wire types stay private.

pub mod dashscope;
mod errors;

pub use dashscope::{DashScope, DashScopeOptions, Sleeper};
