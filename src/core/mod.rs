//! The platform-free core: parsing, image fitting, quotas, jobs and each job's conversation. It
//! imports no chat-platform or HTTP-client types (`.ci/run` checks this); chats, the backend and
//! the store plug in through the ports (`ports::chat::Chat`, `ports::model::EditService`,
//! `ports::store::Store`).

pub mod access;
pub mod admin;
pub mod budget;
pub mod clock;
pub mod command;
pub mod conversation;
pub mod error;
pub mod format;
pub mod image;
pub mod jobs;
pub mod jpeg;
pub mod model;
pub mod outbox;
pub mod pipeline;
pub mod ports;
pub mod queue;
pub mod quota;
pub mod reconnect;
pub mod throttle;
pub mod verify;
