//! Image-edit services: DashScope (and 302.AI, which proxies its body), ComfyUI and
//! OpenAI-compatible servers. Each adapter's wire types stay private to it.

pub mod client;
pub mod comfyui;
pub mod dashscope;
mod errors;
pub mod failover;
pub mod openai;

pub use client::{CallPolicy, Sleeper};
pub use dashscope::{DashScope, DashScopeOptions};
pub use failover::{Member, Services};
pub use openai::{OpenAi, OpenAiOptions};
