//! The daemon and the admin commands on a PostgreSQL store: an edit is reserved, delivered and
//! charged there (several daemons on one database: `replicas.rs`); a block set from the CLI is
//! in force at once, and so is an unblock, which the daemon hears as a NOTIFY (its cached block
//! would otherwise be trusted for 10 s).

use std::time::{Duration, Instant};

use qwen_edit_bot::config::Settings;

use crate::fakes::dashscope::{API_KEY, FakeDashScope};
use crate::fakes::images;
use crate::fakes::telegram::{self as tg, FakeTelegram, TOKEN};

fn config(tg: &FakeTelegram, ds: &FakeDashScope, database: &str) -> String {
    format!(
        "[backend]\nbase_url = {:?}\nmax_requests_per_second = 1000.0\n\
         [telegram]\nenabled = true\napi_url = {:?}\npoll_timeout_secs = 1\n\
         [quota]\ndatabase = {database:?}\nper_user = 5\n[http]\nlisten = \"\"\n",
        ds.base_url, tg.url,
    )
}

fn env(k: &str) -> Option<String> {
    match k {
        "DASHSCOPE_API_KEY" => Some(API_KEY.into()),
        "TELEGRAM_BOT_TOKEN" => Some(TOKEN.into()),
        _ => None,
    }
}

fn photo(telegram: &FakeTelegram, id: i32, user: i64) -> serde_json::Value {
    let file = format!("photo-{id}");
    telegram.add_file(&file, images::jpeg(800, 600));
    tg::message_update(tg::photo_message(
        id,
        tg::private_chat(user),
        tg::user(user, "en"),
        &file,
        Some("/edit make it night"),
    ))
}

/// The fakes and the settings of a daemon on the database `url` (its config in the folder).
async fn daemon_on(url: &str) -> (FakeTelegram, FakeDashScope, tempfile::TempDir, Settings) {
    let (telegram, dashscope) = (FakeTelegram::start().await, FakeDashScope::start().await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config(&telegram, &dashscope, url)).unwrap();
    let settings = Settings::load_with_env(&path, env).unwrap();
    (telegram, dashscope, dir, settings)
}

/// The first text shown (a message, a caption or an edit of one) containing `needle`, within
/// 10 s.
async fn said(telegram: &FakeTelegram, needle: &str) -> serde_json::Value {
    let wait = async {
        loop {
            let found = telegram.shown_texts().into_iter().find(|c| {
                c.params["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(needle))
            });
            if let Some(c) = found {
                return c.params;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("nothing said containing {needle:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_on_postgres_and_hears_cli_changes_at_once() {
    let Some(url) = super::pg::database("the_daemon_runs_on_postgres").await else {
        return;
    };
    let (telegram, dashscope, dir, settings) = daemon_on(&url).await;
    let path = dir.path().join("config.toml");
    assert_eq!(
        qwen_edit_bot::app::problems(&settings),
        Vec::<String>::new()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(qwen_edit_bot::app::serve(settings.clone(), async {
        let _ = stopped.await;
    }));

    telegram.push_update(photo(&telegram, 10, 42));
    telegram.wait_results(1, 20).await;

    // The edit is in PostgreSQL's ledger (not in a file a wrong dispatch would have made).
    let ledger = qwen_edit_bot::store::postgres::open_existing(&url).unwrap();
    let since = chrono::Utc::now() - chrono::Duration::days(1);
    let rows = {
        use qwen_edit_bot::core::ports::store::{ReportBy, Store};
        ledger
            .report(since, None, ReportBy::User, None)
            .await
            .unwrap()
    };
    assert_eq!((rows.len(), rows[0].images), (1, 1), "{rows:?}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only config.toml"
    );

    let cli = |args: &'static [&'static str]| {
        let path = path.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_qwen-edit-bot"))
                .args(args)
                .arg("--config")
                .arg(&path)
                .env_clear()
                .output()
                .await
                .unwrap()
        }
    };
    let blocked = cli(&["quota", "block", "telegram:42"]).await;
    assert!(
        blocked.status.success(),
        "{}",
        String::from_utf8_lossy(&blocked.stderr)
    );
    // A block is read in the reserve itself: the next request is refused.
    telegram.push_update(photo(&telegram, 11, 42));
    let refused = said(&telegram, "not allowed to use this bot").await;
    assert_eq!(refused["chat_id"], 42);
    assert_eq!(dashscope.calls(), 1, "the blocked request reached no model");
    // The daemon now trusts that block for 10 s without asking the store: only the notice of
    // the unblock can let the next request through before then.
    let refused_at = Instant::now();
    let unblocked = cli(&["quota", "unblock", "telegram:42"]).await;
    assert!(unblocked.status.success());
    telegram.push_update(photo(&telegram, 12, 42));
    telegram.wait_results(2, 20).await;
    assert!(
        refused_at.elapsed() < Duration::from_secs(8),
        "served {:?} after the refusal: the cached block was dropped by the notice, not by age",
        refused_at.elapsed()
    );

    let usage = cli(&[
        "usage",
        "--since",
        "2026-01-01",
        "--by",
        "user",
        "--format",
        "json",
    ])
    .await;
    assert!(
        usage.status.success(),
        "{}",
        String::from_utf8_lossy(&usage.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&usage.stdout).unwrap();
    assert_eq!(report["rows"][0]["key"], "telegram:42");
    assert_eq!(report["rows"][0]["delivered"], 2);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), daemon)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn store_copy_moves_a_sqlite_install_to_postgres_whole() {
    use qwen_edit_bot::core::model::{Platform, UserRef};
    use qwen_edit_bot::core::ports::store::{JobStatus, ReportBy, ResultAt, Store};
    use qwen_edit_bot::store::sqlite::SqliteStore;

    use super::quota::{at, limits, reservation, user};
    let Some(url) = super::pg::database("store_copy_moves_a_sqlite_install").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("old.sqlite3");
    let old = SqliteStore::open(&file).unwrap();
    let now = at(2026, 12, 3, 9, 0);
    let l = limits(10);
    for (id, who, group) in [("a", "1", None), ("b", "1", Some("-7")), ("c", "2", None)] {
        let mut r = reservation(id, who, group, 2);
        r.token = Some(format!("tok-{id}"));
        r.spec = Some(format!("{{\"job\":\"{id}\"}}"));
        old.reserve(&r, &l, now).await.unwrap().unwrap();
    }
    let parts = ["https://r/1.png".to_string()];
    old.save_result("a", Some("req-a"), &parts, Some("cloud"), now)
        .await
        .unwrap();
    let at_msg = ResultAt {
        chat: "1".into(),
        message: "55".into(),
    };
    old.deliver("a", 1, None, Some(&at_msg), now).await.unwrap();
    old.finish("b", JobStatus::Failed, None, Some("timeout"), now)
        .await
        .unwrap();
    old.set_limit(&user("2"), None, Some(4)).await.unwrap();
    old.set_blocked(&user("3"), Some("-7"), true).await.unwrap();
    old.reset_usage(&user("1")).await.unwrap();
    old.set_allowed(Platform::Telegram, "-7", true)
        .await
        .unwrap();
    old.save_album_part("g1", "m1", "{\"p\":1}").await.unwrap();

    let run = |args: Vec<String>| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_qwen-edit-bot"))
            .args(args)
            .env_clear()
            .output()
            .await
            .unwrap()
    };
    let args = vec![
        "store".into(),
        "copy".into(),
        "--from".into(),
        file.display().to_string(),
        "--to".into(),
        url.clone(),
    ];
    // Not while a bot holds the file.
    let held = qwen_edit_bot::store::lock(file.to_str().unwrap())
        .await
        .unwrap();
    let out = run(args.clone()).await;
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(said.contains("stop it before copying"), "{said}");
    drop(held);

    let out = run(args.clone()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        printed.contains("jobs: 3 rows") && printed.contains("users: 3 rows"),
        "{printed}"
    );

    let new = qwen_edit_bot::store::postgres::open_existing(&url).unwrap();
    let since = now - chrono::Duration::days(1);
    for by in [ReportBy::User, ReportBy::Day, ReportBy::Service] {
        assert_eq!(
            new.report(since, None, by, None).await.unwrap(),
            old.report(since, None, by, None).await.unwrap()
        );
    }
    assert_eq!(
        new.unfinished().await.unwrap(),
        old.unfinished().await.unwrap()
    );
    for (who, group) in [("1", None), ("2", None), ("3", Some("-7"))] {
        assert_eq!(
            new.settings(&user(who), group).await.unwrap(),
            old.settings(&user(who), group).await.unwrap()
        );
        assert_eq!(
            new.used(&user(who), since).await.unwrap(),
            old.used(&user(who), since).await.unwrap()
        );
    }
    assert_eq!(new.job("a").await.unwrap(), old.job("a").await.unwrap());
    assert_eq!(
        new.by_token("tok-a").await.unwrap(),
        old.by_token("tok-a").await.unwrap()
    );
    assert_eq!(
        new.allowed_places().await.unwrap(),
        old.allowed_places().await.unwrap()
    );
    assert_eq!(new.album_parts("g1").await.unwrap(), ["{\"p\":1}"]);
    // The album sequence goes on too: a part saved now comes after the copied one.
    new.save_album_part("g1", "m2", "{\"p\":2}").await.unwrap();
    assert_eq!(
        new.album_parts("g1").await.unwrap(),
        ["{\"p\":1}", "{\"p\":2}"]
    );
    // The sequence goes on after the copied rows (a restarted one would collide with job 1).
    let one = UserRef::new(Platform::Telegram, "1");
    let before = new.used(&one, since).await.unwrap();
    new.reserve(&reservation("d", "1", None, 1), &l, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new.used(&one, since).await.unwrap(), before + 1);

    let again = run(args).await;
    assert!(
        !again.status.success(),
        "a second copy would merge two ledgers"
    );
    let said = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(said.contains("copy into an empty database"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_does_not_start_beside_a_daemon_of_an_earlier_version() {
    let Some(url) = super::pg::database("a_replica_does_not_start_beside_an_older_daemon").await
    else {
        return;
    };
    let (_telegram, dashscope, _dir, settings) = daemon_on(&url).await;
    // An earlier version held this run lock alone while it ran.
    let (older, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    older
        .query_one("SELECT pg_advisory_lock($1)", &[&0x0071_6562_2d72_756e_i64])
        .await
        .unwrap();
    let refused = qwen_edit_bot::app::serve(settings, async {}).await;
    let refused = refused.expect_err("refused beside it").to_string();
    assert!(refused.contains("earlier version"), "{refused}");
    assert_eq!(dashscope.calls(), 0);
}
