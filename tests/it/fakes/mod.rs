//! Local stand-ins that speak the real wire protocols.

pub mod comfyui;
pub mod dashscope;
pub mod discord;
pub mod images;
pub mod multipart;
pub mod openai;
pub mod telegram;
