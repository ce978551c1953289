//! The one integration-test binary. Every test starts its own fakes on 127.0.0.1.

mod access;
mod chat_double;
mod cli;
mod comfyui;
mod command;
mod config;
mod conversation;
mod daemon;
mod dashscope;
mod discord;
mod edit_double;
mod fakes;
mod fitting;
mod jobs;
mod jpeg;
mod outbox;
mod pg;
mod pillow;
mod postgres;
mod quota;
mod replicas;
mod services;
mod store_contract;
mod telegram;
