//! The platform-free core: parsing, image fitting, quotas, jobs. It imports no chat-platform
//! or HTTP-client types (`.ci/run` checks this); front-ends and the backend plug in via traits.

pub mod access;
pub mod budget;
pub mod clock;
pub mod command;
pub mod edit;
pub mod error;
pub mod frontend;
pub mod image;
pub mod jobs;
pub mod jpeg;
pub mod ledger;
pub mod pipeline;
pub mod policy;
pub mod queue;
pub mod quota;
pub mod reconnect;
pub mod throttle;
pub mod verify;
