//! Several bot processes (replicas) on one PostgreSQL store, run as the real binary against the
//! fakes: quotas stay exact whichever replica takes a request; exactly one replica polls
//! Telegram and another takes over within seconds when it is killed; the jobs a killed replica
//! held are finished by the others, once each, and a job whose answer was stored is delivered
//! from it without a second model call.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::fakes::dashscope::FakeDashScope;
use crate::fakes::images;
use crate::fakes::telegram::{self as tg, FakeTelegram, Fault, TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_qwen-edit-bot");
const SECRET: &str = "hook-secret";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The fakes, one database and the replicas' configs.
struct Cluster {
    tg: FakeTelegram,
    ds: FakeDashScope,
    dir: tempfile::TempDir,
    database: String,
}

/// One bot process; its logs are read continuously so a chatty log never blocks it.
struct Replica {
    child: Child,
    logs: tokio::task::JoinHandle<String>,
    /// What its Telegram calls carry (`FakeTelegram::url_via`).
    via: String,
    /// Its webhook address, in webhook mode.
    hook: Option<String>,
}

impl Cluster {
    async fn new(name: &str) -> Option<Self> {
        let database = super::pg::database(name).await?;
        Some(Self {
            tg: FakeTelegram::start().await,
            ds: FakeDashScope::start().await,
            dir: tempfile::tempdir().unwrap(),
            database,
        })
    }

    /// Starts replica `i` with `quota` lines added to `[quota]` and `workers` jobs at once;
    /// polling Telegram, or taking webhooks on a port of its own.
    fn spawn(&self, i: usize, quota: &str, workers: u32, webhook: bool) -> Replica {
        let via = format!("r{i}");
        let port = free_port();
        let mode = if webhook {
            format!(
                "mode = \"webhook\"\nwebhook_url = \"https://bot.example/tg/hook\"\n\
                 webhook_listen = \"127.0.0.1:{port}\"\n"
            )
        } else {
            String::new()
        };
        let config = format!(
            "shutdown_grace_secs = 5\n\
             [backend]\nbase_url = {:?}\nmax_requests_per_second = 1000.0\n\
             max_concurrent = {workers}\ntimeout_secs = 30\n\
             [telegram]\nenabled = true\napi_url = {:?}\npoll_timeout_secs = 1\n{mode}\
             [quota]\ndatabase = {:?}\njob_lease_secs = 3\n{quota}\n\
             [http]\nlisten = \"\"\n",
            self.ds.base_url,
            self.tg.url_via(&via),
            self.database,
        );
        let path: PathBuf = self.dir.path().join(format!("config-{via}.toml"));
        std::fs::write(&path, config).unwrap();
        let env = [
            ("TELEGRAM_BOT_TOKEN", TOKEN),
            ("TELEGRAM_WEBHOOK_SECRET", SECRET),
            ("RUST_LOG", "info"),
        ];
        let (child, logs) = super::daemon::run_binary(&path, &env);
        Replica {
            child,
            logs,
            via,
            hook: webhook.then(|| format!("http://127.0.0.1:{port}/tg/hook")),
        }
    }

    /// Replicas 0..n, started alike (see [`Cluster::spawn`]).
    fn spawn_all(&self, n: usize, quota: &str, workers: u32, webhook: bool) -> Vec<Replica> {
        (0..n)
            .map(|i| self.spawn(i, quota, workers, webhook))
            .collect()
    }

    /// A private-chat photo with `/edit`, as the update Telegram would send.
    fn photo(&self, id: i32, chat: Value, user: i64) -> Value {
        let file = format!("f{id}");
        self.tg.add_file(&file, images::jpeg(640, 480));
        tg::photo_message(id, chat, tg::user(user, "en"), &file, Some("/edit night"))
    }

    /// [`Cluster::photo`] as update `id`, for a webhook.
    fn update(&self, id: i32, chat: Value, user: i64) -> Value {
        json!({ "update_id": id, "message": self.photo(id, chat, user) })
    }

    /// The replicas whose getUpdates calls the fake saw since `since`.
    fn pollers_since(&self, since: Instant) -> Vec<String> {
        let mut vias: Vec<String> = self
            .tg
            .polls()
            .into_iter()
            .filter(|c| c.at >= since)
            .map(|c| c.via)
            .collect();
        vias.sort();
        vias.dedup();
        vias
    }

    /// Results the chat shows (placeholders a result was put into).
    fn photos_in(&self, chat: i64) -> usize {
        self.tg
            .shown()
            .iter()
            .filter(|m| m.chat == chat && m.result)
            .count()
    }

    /// Images delivered and charged to `user`, from the ledger.
    async fn used(&self, user: i64) -> u32 {
        use qwen_edit_bot::core::model::{Platform, UserRef};
        use qwen_edit_bot::core::ports::store::Store;
        let ledger = qwen_edit_bot::store::postgres::open_existing(&self.database).unwrap();
        let since = chrono::Utc::now() - chrono::Duration::days(1);
        ledger
            .used(&UserRef::new(Platform::Telegram, user.to_string()), since)
            .await
            .unwrap()
    }
}

impl Replica {
    /// SIGKILL, and the process reaped.
    async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM: the replica finishes what it runs, hands the rest over and exits.
    fn terminate(&self) {
        let pid = self.child.id().expect("running") as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    /// SIGTERM, then a clean exit within 30 s; returns the logs.
    async fn stop(self) -> String {
        self.terminate();
        self.exited().await
    }

    /// A clean exit within 30 s (after [`Replica::terminate`]); returns the logs.
    async fn exited(mut self) -> String {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("stopped in time")
            .unwrap();
        let logs = self.logs.await.unwrap();
        assert!(status.success(), "exit code 0 after SIGTERM; logs:\n{logs}");
        logs
    }

    /// Posts `update` to this replica's webhook until it is up.
    async fn post(&self, client: &reqwest::Client, update: &Value) {
        let url = self.hook.as_ref().expect("a webhook replica");
        for _ in 0..500 {
            let sent = client
                .post(url)
                .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
                .json(update)
                .send()
                .await;
            if let Ok(r) = sent {
                assert!(r.status().is_success(), "{}", r.status());
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the replica's webhook never came up");
    }
}

/// Stops each replica still running, each with a clean exit.
async fn stop_all(replicas: impl IntoIterator<Item = Replica>) {
    for r in replicas {
        r.stop().await;
    }
}

/// Waits up to `secs` for `done`.
async fn until(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 150 requests at once, 50 to each of three webhook replicas, under one quota rule: exactly
/// `granted` are delivered and charged, the rest refused, whichever replica took them.
async fn race(name: &str, quota: &str, granted: usize, update: impl Fn(&Cluster, i32) -> Value) {
    let Some(cluster) = Cluster::new(name).await else {
        return;
    };
    let quota = format!("{quota}\nmax_in_flight_per_user = 50\nmax_queue = 1000");
    let replicas = cluster.spawn_all(3, &quota, 4, true);
    let client = reqwest::Client::new();
    let updates: Vec<Value> = (0..150)
        .map(|i| json!({ "update_id": 1 + i, "message": update(&cluster, 100 + i) }))
        .collect();
    let posts = updates
        .iter()
        .enumerate()
        .map(|(i, u)| replicas[i % 3].post(&client, u));
    futures::future::join_all(posts).await;
    until(60, "the granted requests delivered", || {
        cluster.tg.results().len() >= granted
    })
    .await;
    // The refused ones were told (repeats to one chat are not, to keep chats quiet) and cost
    // nothing; nothing more is delivered.
    until(30, "a refusal said", || {
        cluster.tg.calls_to("sendmessage").iter().any(|c| {
            c.params["text"]
                .as_str()
                .is_some_and(|t| t.contains("More from"))
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.tg.results().len(), granted, "{name}: delivered");
    assert_eq!(cluster.ds.calls(), granted, "{name}: model calls");
    let ledger = qwen_edit_bot::store::postgres::open_existing(&cluster.database).unwrap();
    let rows = {
        use qwen_edit_bot::core::ports::store::{ReportBy, Store};
        let since = chrono::Utc::now() - chrono::Duration::days(1);
        ledger
            .report(since, None, ReportBy::Day, None)
            .await
            .unwrap()
    };
    assert_eq!(
        rows.iter().map(|r| r.images).sum::<u64>(),
        granted as u64,
        "{name}: charged"
    );
    stop_all(replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_keep_per_user_quota_exact() {
    race("replicas_per_user", "per_user = 10", 10, |c, id| {
        c.photo(id, tg::private_chat(42), 42)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_keep_per_chat_quota_exact() {
    race(
        "replicas_per_chat",
        "per_user = 100\nper_chat = 7",
        7,
        |c, id| c.photo(id, tg::group_chat(-1001), 5000 + i64::from(id)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_keep_the_global_quota_exact() {
    race(
        "replicas_global",
        "per_user = 100\nglobal_per_day = 8",
        8,
        |c, id| {
            let user = 7000 + i64::from(id);
            c.photo(id, tg::private_chat(user), user)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_hands_over_its_polling_and_its_jobs() {
    let Some(cluster) = Cluster::new("replicas_kill").await else {
        return;
    };
    let mut replicas = cluster.spawn_all(3, "per_user = 10", 4, false);
    // Exactly one replica polls, and no getUpdates is ever refused for a second poller.
    let started = Instant::now();
    until(20, "a replica polls", || {
        !cluster.pollers_since(started).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pollers = cluster.pollers_since(started);
    assert_eq!(pollers.len(), 1, "one poller: {pollers:?}");
    let leader = replicas.iter().position(|r| r.via == pollers[0]).unwrap();

    // Four jobs wait on the model at the leader when it is killed: they ran once, without an
    // answer, so the replica that takes them over calls the model again.
    cluster.ds.hold();
    for user in 1..=4 {
        let msg = cluster.photo(10 + user as i32, tg::private_chat(user), user);
        cluster.tg.push_update(tg::message_update(msg));
    }
    until(20, "four calls at the leader", || {
        cluster.ds.in_flight() == 4
    })
    .await;
    replicas[leader].kill().await;
    let killed = Instant::now();
    cluster.ds.release();
    until(5, "another replica polls", || {
        cluster
            .pollers_since(killed + Duration::from_millis(1500))
            .iter()
            .any(|v| *v != pollers[0])
    })
    .await;
    until(30, "the four jobs delivered", || {
        (1..=4).all(|chat| cluster.photos_in(chat) == 1)
    })
    .await;
    assert_eq!(
        cluster.ds.calls(),
        8,
        "each cut-off job called the model once more"
    );

    // A job whose answer is stored but not yet delivered (Telegram fails its photo for a
    // while) when its replica is killed is delivered from that answer: no new model call.
    let leader = replicas
        .iter()
        .position(|r| {
            cluster
                .pollers_since(Instant::now() - Duration::from_secs(2))
                .contains(&r.via)
        })
        .unwrap();
    cluster
        .tg
        .fail_next("editmessagemedia", Fault::ServerError, 3);
    let msg = cluster.photo(20, tg::private_chat(5), 5);
    cluster.tg.push_update(tg::message_update(msg));
    until(20, "the photo refused once", || {
        cluster.tg.calls_to("editmessagemedia").len() > 4
    })
    .await;
    replicas[leader].kill().await;
    until(30, "the answered job delivered", || {
        cluster.photos_in(5) == 1
    })
    .await;
    assert_eq!(
        cluster.ds.calls(),
        9,
        "no second model call for a stored answer"
    );
    for user in 1..=5 {
        assert_eq!(cluster.used(user).await, 1, "user {user} charged once");
    }
    assert_eq!(cluster.tg.conflicts(), 0, "never two pollers at once");
    stop_all(replicas.into_iter().filter(|r| r.child.id().is_some())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_and_an_unblock_from_the_cli_hold_on_every_replica_within_a_second() {
    let Some(cluster) = Cluster::new("replicas_block").await else {
        return;
    };
    let replicas = cluster.spawn_all(2, "per_user = 10", 4, true);
    let client = reqwest::Client::new();
    let update = |id: i32| cluster.update(id, tg::private_chat(77), 77);
    replicas[0].post(&client, &update(1)).await;
    until(20, "the first edit delivered", || {
        cluster.photos_in(77) == 1
    })
    .await;
    let cli = |what: &'static str| {
        let path = cluster.dir.path().join("config-r1.toml");
        async move {
            let out = Command::new(BIN)
                .args(["quota", what, "telegram:77", "--config"])
                .arg(path)
                .env_clear()
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let said = |needle: &'static str| {
        let tg = cluster.tg.clone();
        move || {
            tg.calls_to("sendmessage").iter().any(|c| {
                c.params["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(needle))
            })
        }
    };
    cli("block").await;
    let blocked = Instant::now();
    replicas[1].post(&client, &update(2)).await;
    until(5, "the blocked request refused", said("not allowed")).await;
    assert!(
        blocked.elapsed() < Duration::from_secs(1),
        "{:?}",
        blocked.elapsed()
    );
    // The refusal is now cached on replica 1; only the notice of the unblock clears it early.
    cli("unblock").await;
    let unblocked = Instant::now();
    replicas[1].post(&client, &update(3)).await;
    until(5, "served again", || cluster.photos_in(77) == 2).await;
    assert!(
        unblocked.elapsed() < Duration::from_secs(2),
        "{:?}",
        unblocked.elapsed()
    );
    assert_eq!(
        cluster.ds.calls(),
        2,
        "the blocked request reached no model"
    );
    stop_all(replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_limits_hold_for_all_replicas_together() {
    let Some(cluster) = Cluster::new("replicas_admission").await else {
        return;
    };
    // One job at a time per replica, two waiting at most in all, two per user at most.
    let quota = "per_user = 100\nmax_in_flight_per_user = 2\nmax_queue = 2";
    let replicas = cluster.spawn_all(2, quota, 1, true);
    let client = reqwest::Client::new();
    let said = |needle: &'static str| {
        let tg = cluster.tg.clone();
        move || {
            tg.calls_to("sendmessage").iter().any(|c| {
                c.params["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(needle))
            })
        }
    };
    cluster.ds.hold();
    // User 1 has one edit at each replica: a third is refused, though each replica alone holds
    // only one of theirs.
    for (id, at) in [(1, 0), (2, 1)] {
        let update = cluster.update(id, tg::private_chat(1), 1);
        replicas[at].post(&client, &update).await;
    }
    until(20, "both running", || cluster.ds.in_flight() == 2).await;
    let third = cluster.update(3, tg::private_chat(1), 1);
    replicas[0].post(&client, &third).await;
    until(
        10,
        "the third refused",
        said("You already have 2 edits in progress"),
    )
    .await;
    // Two more users' edits wait, one at each replica; a third waiting edit is one too many
    // for the queue of all replicas, though each replica alone holds one.
    for (id, user, at) in [(4, 2, 0), (5, 3, 1)] {
        let update = cluster.update(id, tg::private_chat(user), user);
        replicas[at].post(&client, &update).await;
    }
    let busy = cluster.update(6, tg::private_chat(4), 4);
    replicas[0].post(&client, &busy).await;
    until(10, "the queue full", said("The bot is busy right now")).await;
    cluster.ds.release();
    until(30, "the four admitted edits delivered", || {
        cluster.photos_in(1) == 2 && cluster.photos_in(2) == 1 && cluster.photos_in(3) == 1
    })
    .await;
    assert_eq!(cluster.photos_in(4), 0);
    assert_eq!(cluster.ds.calls(), 4, "refused edits reached no model");
    stop_all(replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_albums_parts_taken_by_different_replicas_are_one_request() {
    let Some(cluster) = Cluster::new("replicas_album").await else {
        return;
    };
    let replicas = cluster.spawn_all(2, "per_user = 10", 4, true);
    let client = reqwest::Client::new();
    // Three photos of one album, the captioned one to the first replica, the others to the
    // second (a load balancer in front of webhooks).
    for (id, width, at) in [(30, 500, 0), (31, 600, 1), (32, 700, 1)] {
        let file = format!("album{id}");
        cluster.tg.add_file(&file, images::jpeg(width, 500));
        let caption = (id == 30).then_some("/edit put them on a beach");
        let m = tg::photo_message(id, tg::group_chat(-100), tg::user(7, "en"), &file, caption);
        let update = json!({ "update_id": id, "message": tg::with_media_group(m, "album-r") });
        replicas[at].post(&client, &update).await;
    }
    until(20, "the album's result", || cluster.tg.results().len() == 1).await;
    // Both replicas' collection timers have run out by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = cluster.ds.seen();
    assert_eq!(seen.len(), 1, "one request");
    let widths: Vec<u32> = seen[0].images.iter().map(|i| i.1).collect();
    assert_eq!(widths, [500, 600, 700]);
    assert_eq!(cluster.tg.results().len(), 1);
    stop_all(replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_takes_jobs_waiting_at_the_busy_poller() {
    let Some(cluster) = Cluster::new("replicas_share").await else {
        return;
    };
    // One job at a time per replica; the poller takes every request.
    let replicas = cluster.spawn_all(2, "per_user = 10", 1, false);
    let started = Instant::now();
    until(20, "a replica polls", || {
        !cluster.pollers_since(started).is_empty()
    })
    .await;
    cluster.ds.hold();
    for user in 1..=4 {
        let msg = cluster.photo(40 + user as i32, tg::group_chat(-200), user);
        cluster.tg.push_update(tg::message_update(msg));
    }
    // The poller runs one and queues three; the other replica takes one of those.
    until(15, "a model call from each replica", || {
        cluster.ds.in_flight() == 2
    })
    .await;
    cluster.ds.release();
    until(30, "all four delivered", || cluster.photos_in(-200) == 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.photos_in(-200), 4, "each once");
    assert_eq!(cluster.ds.calls(), 4, "each job called the model once");
    assert_eq!(cluster.ds.max_in_flight(), 2);
    for user in 1..=4 {
        assert_eq!(cluster.used(user).await, 1, "user {user} charged once");
    }
    // Each job kept its one placeholder (the store keeps it with the job): the replica that
    // took a job over put the result into the placeholder the poller had posted, in its
    // waiting text until then. Nothing else was posted, nothing deleted.
    assert_eq!(
        cluster.tg.calls_to("sendphoto").len(),
        4,
        "one placeholder each"
    );
    assert!(cluster.tg.calls_to("deletemessage").is_empty());
    assert!(
        cluster
            .tg
            .calls_to("sendphoto")
            .iter()
            .any(|c| c.str("caption").is_some_and(|t| t.contains("In the queue"))),
        "jobs waited with their place shown"
    );
    let shown = cluster.tg.shown();
    assert_eq!(shown.len(), 4, "{shown:?}");
    assert!(shown.iter().all(|m| m.result), "{shown:?}");
    stop_all(replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_replica_keeps_the_job_it_finishes_past_its_lease() {
    let Some(cluster) = Cluster::new("replicas_stop").await else {
        return;
    };
    // Leases of 3 s; the stopping replica has 5 s to finish its job.
    let replicas = cluster.spawn_all(2, "per_user = 10", 4, true);
    let client = reqwest::Client::new();
    cluster.ds.hold();
    let update = cluster.update(50, tg::private_chat(9), 9);
    replicas[0].post(&client, &update).await;
    until(20, "the job at the model", || cluster.ds.in_flight() == 1).await;
    let mut replicas = replicas.into_iter();
    let (stopping, other) = (replicas.next().unwrap(), replicas.next().unwrap());
    stopping.terminate();
    // Longer than a lease: the stopping replica must go on renewing while it finishes.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    cluster.ds.release();
    stopping.exited().await;
    until(20, "delivered", || cluster.photos_in(9) == 1).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(cluster.ds.calls(), 1, "not run again by the other replica");
    assert_eq!(cluster.photos_in(9), 1);
    assert_eq!(cluster.used(9).await, 1);
    other.stop().await;
}
