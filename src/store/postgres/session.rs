//! What a daemon holds on a PostgreSQL store besides its pool: roles only one replica plays at
//! a time (Telegram polling), elected with session advisory locks that the server releases when
//! a replica's connection ends, however the process ends; and the change notices the admin
//! commands send (`NOTIFY`), which every running replica hears at once (`LISTEN`) instead of
//! polling a stamp file.

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio_postgres::{AsyncMessage, Client};

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

/// How often a replica that is not the leader tries to become it, and how often the leader
/// checks that its session (and so its lock) is still there.
const ELECTION: Duration = Duration::from_secs(1);

/// Whether this process holds the role `key` among every replica on the database: a session
/// advisory lock on a connection of its own. The watch turns true when the lock is taken and
/// false as soon as the session is found gone (the server then released the lock, and another
/// replica may take it); until then it is tried again every [`ELECTION`]. The server releases
/// the lock of a process that dies, however it dies, when its connection closes.
pub fn elect(url: String, key: i64) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            if let Err(e) = hold(&url, key, &tx).await {
                tracing::debug!(error = %e, "leader election: no session");
            }
            tx.send_if_modified(|leader| std::mem::replace(leader, false));
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(ELECTION).await;
        }
    });
    rx
}

/// One session: tries the lock until it is taken, then checks the session while it holds it.
/// Returns when the session fails or nobody listens any more.
async fn hold(url: &str, key: i64, tx: &tokio::sync::watch::Sender<bool>) -> anyhow::Result<()> {
    let client = connect(url).await?;
    // The server notices a replica that vanished with its host (no FIN, no RST) within about
    // 25 s and releases its lock, instead of after the system's keepalive of hours.
    client
        .batch_execute(
            "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
             SET tcp_keepalives_count = 3",
        )
        .await?;
    loop {
        if tx.is_closed() {
            return Ok(());
        }
        let took: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await?
            .get(0);
        if took {
            break;
        }
        tokio::time::sleep(ELECTION).await;
    }
    tracing::info!(role = key, "this replica took its role");
    tx.send_replace(true);
    loop {
        tokio::time::sleep(ELECTION).await;
        if tx.is_closed() {
            return Ok(());
        }
        // A session that does not answer in time is taken as lost: this replica steps down
        // (dropping the connection, which lets the server release the lock) rather than go on
        // while another may have been elected.
        tokio::time::timeout(3 * ELECTION, client.simple_query("SELECT 1"))
            .await
            .map_err(|_| anyhow::anyhow!("the session did not answer within 3 s"))??;
    }
}

/// The advisory lock key of the run lock daemons before replicas held ("qeb-run").
const OLD_RUN_LOCK: i64 = 0x0071_6562_2d72_756e;

/// Held while a replica runs: the run lock of earlier versions, shared. Replicas share it;
/// a daemon of an earlier version (which took it alone, and did not hold jobs by lease, so both
/// would run the same jobs) can neither run beside replicas nor have them start beside it.
#[derive(Debug)]
pub struct ReplicaLock {
    _client: Client,
}

/// Takes the [`ReplicaLock`], or says that an earlier version runs on the store.
pub async fn refuse_beside_older(url: &str) -> anyhow::Result<ReplicaLock> {
    let client = connect(url).await?;
    let took: bool = client
        .query_one("SELECT pg_try_advisory_lock_shared($1)", &[&OLD_RUN_LOCK])
        .await?
        .get(0);
    if !took {
        anyhow::bail!(
            "a qwen-edit-bot of an earlier version runs on the store {} (it holds the run lock \
             of versions without replicas); stop it before starting this one",
            crate::config::without_password(url)
        );
    }
    Ok(ReplicaLock { _client: client })
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
