//! What a daemon holds on a PostgreSQL store besides its pool: the one-daemon-per-store lock
//! (a session advisory lock, released by the server when the connection ends, however the
//! process ends) and the change notices the admin commands send (`NOTIFY`), which a running
//! daemon hears at once (`LISTEN`) instead of polling a stamp file.

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio_postgres::{AsyncMessage, Client};

use crate::config::without_password;

/// The advisory lock key of the one-daemon-per-store lock ("qeb-run").
const RUN_LOCK: i64 = 0x0071_6562_2d72_756e;
/// The channel admin commands notify after a write.
const CHANGED: &str = "qeb_changed";

/// One connection of its own, its driver task running.
async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = super::connect::session(url).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL session ended");
        }
    });
    Ok(client)
}

/// The one-daemon-per-store lock on a PostgreSQL database, held while this value lives.
#[derive(Debug)]
pub struct SessionLock {
    _client: Client,
}

impl SessionLock {
    /// Takes the lock, or says which store another daemon holds.
    pub async fn take(url: &str) -> anyhow::Result<Self> {
        let client = connect(url).await?;
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&RUN_LOCK])
            .await?;
        if !row.get::<_, bool>(0) {
            anyhow::bail!(
                "another qwen-edit-bot is already running on the store {} (it holds the \
                 database's run lock); stop it first, or give this one its own quota.database",
                without_password(url)
            );
        }
        Ok(Self { _client: client })
    }
}

/// Tells running daemons that the store changed (blocks, limits, allowed places).
pub async fn notify_changed(url: &str) -> anyhow::Result<()> {
    connect(url)
        .await?
        .batch_execute(&format!("NOTIFY {CHANGED}"))
        .await?;
    Ok(())
}

/// Calls `changed` for every change notice, for as long as the process runs: the listening
/// connection is opened again (after a pause) when it drops, and `changed` is called then too,
/// since notices may have been missed meanwhile.
pub async fn listen_for_changes(url: String, changed: impl Fn() + Send + 'static) {
    loop {
        match listen_once(&url, &changed).await {
            Ok(()) => tracing::warn!("the PostgreSQL change listener stopped; listening again"),
            Err(e) => tracing::warn!(error = %e, "cannot listen for store changes; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        changed();
    }
}

async fn listen_once(url: &str, changed: &impl Fn()) -> anyhow::Result<()> {
    let (client, mut connection) = super::connect::session(url).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL change listener failed");
                    return;
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANGED}")).await?;
    while rx.recv().await.is_some() {
        changed();
    }
    driver.abort();
    Ok(())
}
