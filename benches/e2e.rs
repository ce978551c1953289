//! End-to-end benchmark: `cargo bench --bench e2e`.
//!
//! Runs the real binary (release build) against the test fakes (Telegram Bot API, DashScope) on
//! 127.0.0.1 and prints the measurements of docs/PERFORMANCE.md that this bot can be held to:
//! - Telegram: 2048×1536 photo with `/edit …` → the result shown, median of 30 (backend
//!   latency 0);
//! - resident memory idle (one platform) and peak after 66 edits (`/proc/PID/status`);
//! - 30 users in one group at once, backend 0.5 s per job, 30 backend slots;
//! - 200 jobs, backend 0.2 s, `max_concurrent = 4`: elapsed against the ideal 10 s;
//! - 20 results of 3.1 MB made at once for one slow group: the memory peak above idle (the
//!   result bytes the bot holds while they wait their turn);
//! - Bot API calls per job, from the request to its result, for jobs that do not wait and
//!   for jobs that wait, by method; and Discord REST calls per job the same way (the fake
//!   Discord, 20 jobs one at a time, then 40 at once with 2 backend slots).
//!
//! Telegram's limits are lifted (the fake does not enforce them) so that the figures are the
//! bot's own; `E2E_BIN` runs another build with the same harness (a result is an
//! `editMessageMedia`, or a `sendPhoto` that uploads, for builds before placeholders).

#[path = "../tests/it/fakes/mod.rs"]
#[allow(dead_code)]
mod fakes;

use std::time::{Duration, Instant};

use fakes::dashscope::{API_KEY, FakeDashScope};
use fakes::images;
use fakes::telegram::{
    FakeTelegram, TOKEN, group_chat, message_update, photo_message, private_chat, user,
};
use tokio::process::{Child, Command};

const BUILT: &str = env!("CARGO_BIN_EXE_qwen-edit-bot");

struct Run {
    tg: FakeTelegram,
    ds: FakeDashScope,
    _dir: tempfile::TempDir,
    child: Child,
}

/// The bot (`E2E_BIN`, else this build) on `config`, with the DashScope key and the chat's
/// `token` variable only; logs at `E2E_RUST_LOG` (default `warn`).
fn spawn_bot(config: &std::path::Path, token: (&str, &str)) -> Child {
    let bin = std::env::var("E2E_BIN").unwrap_or_else(|_| BUILT.into());
    Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .env_clear()
        .env("DASHSCOPE_API_KEY", API_KEY)
        .env(token.0, token.1)
        .env(
            "RUST_LOG",
            std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn start(max_concurrent: usize) -> Run {
    let lifted = match std::env::var_os("E2E_BIN") {
        Some(_) => "", // an older build may not know these keys
        None => {
            "limit_per_chat = \"1000/1s\"\nlimit_per_group = \"1000/1s\"\nlimit_overall = \"1000/1s\"\n"
        }
    };
    start_with(max_concurrent, lifted).await
}

/// The bot with `max_concurrent` backend slots and `telegram` lines in its `[telegram]`.
async fn start_with(max_concurrent: usize, telegram: &str) -> Run {
    let (tg, ds) = (FakeTelegram::start().await, FakeDashScope::start().await);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[backend]\nbase_url = {:?}\nmax_requests_per_second = 10000.0\nmax_concurrent = {max_concurrent}\n\
         [telegram]\nenabled = true\napi_url = {:?}\npoll_timeout_secs = 5\n{}\
         [quota]\ndatabase = {:?}\nper_user = 1000\nmax_in_flight_per_user = 1000\nmax_queue = 1000\n\
         [http]\nlisten = \"\"\n",
        ds.base_url,
        tg.url,
        telegram,
        dir.path().join("q.sqlite3").to_str().unwrap()
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    // E2E_BIN: another build of the bot (to compare two commits with one harness).
    let child = spawn_bot(
        &dir.path().join("config.toml"),
        ("TELEGRAM_BOT_TOKEN", TOKEN),
    );
    // Ready once it long-polls.
    while tg.polls().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Run {
        tg,
        ds,
        _dir: dir,
        child,
    }
}

/// RssAnon and RssFile of the child, in MiB: what the bot allocated, and the pages of its
/// binary (and libraries) that are mapped in, which the kernel can drop and read back.
fn split(child: &Child) -> (f64, f64) {
    status_mib(child, ["RssAnon:", "RssFile:"])
}

/// VmRSS and VmHWM of the child, in MiB.
fn memory(child: &Child) -> (f64, f64) {
    status_mib(child, ["VmRSS:", "VmHWM:"])
}

/// Two fields of the child's `/proc/PID/status`, in MiB.
fn status_mib(child: &Child, names: [&str; 2]) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id().unwrap())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field(names[0]), field(names[1]))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The results shown so far: each `editMessageMedia` (a result put into its placeholder), or
/// for builds before placeholders each `sendPhoto` that uploaded the image.
fn results(tg: &FakeTelegram) -> Vec<fakes::telegram::Call> {
    tg.calls()
        .into_iter()
        .filter(|c| {
            c.method == "editmessagemedia" || (c.method == "sendphoto" && !c.files.is_empty())
        })
        .collect()
}

async fn wait_results(tg: &FakeTelegram, n: usize, secs: u64) -> Vec<fakes::telegram::Call> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let found = results(tg);
        if found.len() >= n {
            return found;
        }
        assert!(Instant::now() < deadline, "{n} results within {secs} s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Prints the Bot API calls per job of a run of `jobs` jobs, by method (the start-up calls
/// left out; the input's download from the file server is not a call, its `getFile` is).
fn per_job(what: &str, tg: &FakeTelegram, jobs: usize) {
    let methods = tg.calls().into_iter().map(|c| c.method).filter(|m| {
        !matches!(
            m.as_str(),
            "getme" | "setmycommands" | "deletewebhook" | "setwebhook"
        )
    });
    print_per_job(&format!("calls per job, {what}"), methods, jobs);
}

/// Prints `what`, then how many of `calls` (their names) there were per job, in all and by name.
fn print_per_job(what: &str, calls: impl Iterator<Item = String>, jobs: usize) {
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for call in calls {
        *by.entry(call).or_default() += 1;
    }
    let total: usize = by.values().sum();
    let each: Vec<String> = by
        .iter()
        .map(|(m, n)| format!("{m} {:.2}", *n as f64 / jobs as f64))
        .collect();
    println!(
        "{what}: {:.2} ({})",
        total as f64 / jobs as f64,
        each.join(", ")
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn latency_and_memory() {
    let run = start(4).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle, _) = memory(&run.child);
    println!("resident memory idle, Telegram enabled          {idle:>8.1} MiB   (target <= 15)");
    let (anon, file) = split(&run.child);
    println!("  of it the bot's own (anonymous) / the binary's pages  {anon:.1} / {file:.1} MiB");
    run.tg.add_file("big", images::jpeg(2048, 1536));
    let mut times = Vec::new();
    for i in 0..66 {
        let before = results(&run.tg).len();
        let m = photo_message(
            100 + i,
            private_chat(42),
            user(42, "en"),
            "big",
            Some("/edit make it night"),
        );
        let pushed = Instant::now();
        run.tg.push_update(message_update(m));
        let at = wait_results(&run.tg, before + 1, 30).await[before].at;
        if i < 30 {
            times.push(at.duration_since(pushed));
        }
        if std::env::var_os("E2E_TRACE").is_some() && i == 10 {
            for c in run.tg.calls().iter().filter(|c| c.at >= pushed) {
                eprintln!("{:>8.2} ms {}", ms(c.at.duration_since(pushed)), c.method);
            }
            for s in run.ds.seen().iter().rev().take(1) {
                eprintln!("ds seen {:?}", s.images);
            }
        }
        // One at a time, so each measures the whole path.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    per_job("jobs that do not wait (66, one at a time)", &run.tg, 66);
    println!(
        "Telegram 2048x1536 photo -> result, median/30  {:>8.2} ms   (target <= 7.8)",
        ms(median(times))
    );
    let (_, peak) = memory(&run.child);
    println!("peak resident memory after 66 edits             {peak:>8.1} MiB   (target <= 20)");
    assert_eq!(run.ds.calls(), 66);
}

/// `n` users at once (ids from `first_user`) each post `/edit x` on photo "p" in group `chat`
/// (message ids from `first_message`).
fn group_requests(run: &Run, chat: i64, first_message: i32, first_user: i64, n: i32) {
    for u in 0..n {
        let m = photo_message(
            first_message + u,
            group_chat(chat),
            user(first_user + i64::from(u), "en"),
            "p",
            Some("/edit x"),
        );
        run.tg.push_update(message_update(m));
    }
}

async fn group_burst() {
    let run = start(30).await;
    run.ds.set_latency(Duration::from_millis(500));
    run.tg.add_file("p", images::jpeg(800, 600));
    let started = Instant::now();
    group_requests(&run, -100, 200, 1000, 30);
    wait_results(&run.tg, 30, 60).await;
    println!(
        "30 users in one group, backend 0.5 s, 30 slots  {:>8.2} s    (target <= 0.7)",
        started.elapsed().as_secs_f64()
    );
}

async fn throughput() {
    let run = start(4).await;
    run.ds.set_latency(Duration::from_millis(200));
    run.tg.add_file("p", images::jpeg(800, 600));
    let started = Instant::now();
    for u in 0..200 {
        let m = photo_message(
            300 + u,
            private_chat(2000 + i64::from(u)),
            user(2000 + i64::from(u), "en"),
            "p",
            Some("/edit x"),
        );
        run.tg.push_update(message_update(m));
    }
    wait_results(&run.tg, 200, 120).await;
    let elapsed = started.elapsed().as_secs_f64();
    // Reactions come after the result: let the last ones in before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    per_job("jobs that wait (200 at 4 at a time)", &run.tg, 200);
    println!(
        "200 jobs, backend 0.2 s, max_concurrent 4       {elapsed:>8.2} s    ({:.3} x ideal 10 s; target <= 1.05)",
        elapsed / 10.0
    );
}

/// Twenty results of 3.1 MB each (incompressible PNGs) made at once for one group whose chat
/// takes 2 messages in 0.25 s (the bot's own limit): how far the bot's resident memory peaks
/// above idle while the results wait for their turn (`E2E_BIN` must know the outbox's keys).
async fn slow_group_memory() {
    let run = start_with(
        20,
        "limit_per_chat = \"2/0.25s\"\nlimit_per_group = \"1000/1s\"\nlimit_overall = \"1000/1s\"\n",
    )
    .await;
    let result = images::noise_png(1024, 1024);
    let size = result.len();
    run.ds.set_result_bytes(result);
    run.tg.add_file("p", images::jpeg(800, 600));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle, _) = memory(&run.child);
    let started = Instant::now();
    group_requests(&run, -200, 400, 3000, 20);
    wait_results(&run.tg, 20, 60).await;
    let (_, peak) = memory(&run.child);
    println!(
        "20 results of {:.1} MB for one slow group: peak {:.1} MiB above idle {idle:.1} MiB, all shown in {:.2} s",
        size as f64 / 1e6,
        peak - idle,
        started.elapsed().as_secs_f64()
    );
}

/// Discord REST calls per job, by route, for 20 jobs one at a time (they do not wait) and 40
/// at once with 2 backend slots (most wait), backend 0.2 s.
async fn discord_calls() {
    use fakes::discord::{self as dc, FakeDiscord};
    let (discord, ds) = (FakeDiscord::start().await, FakeDashScope::start().await);
    ds.set_latency(Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let limits = match std::env::var_os("E2E_BIN") {
        Some(_) => String::new(),
        None => "limit_per_channel = \"1000/1s\"\nlimit_overall = \"1000/1s\"\n".into(),
    };
    let config = format!(
        "[backend]\nbase_url = {:?}\nmax_requests_per_second = 10000.0\nmax_concurrent = 2\n\
         [telegram]\nenabled = false\n\
         [discord]\nenabled = true\napi_url = {:?}\nguild_ids = [77]\n{limits}\
         [quota]\ndatabase = {:?}\nper_user = 1000\nmax_in_flight_per_user = 1000\nmax_queue = 1000\n\
         [http]\nlisten = \"\"\n",
        ds.base_url,
        discord.rest_url,
        dir.path().join("q.sqlite3").to_str().unwrap()
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let _child = spawn_bot(
        &dir.path().join("config.toml"),
        ("DISCORD_TOKEN", dc::TOKEN),
    );
    discord.wait_ready(30).await;
    discord.wait_for("PUT", "/guilds/*/commands", 1, 30).await;
    // A result: a message posted or edited with a file.
    let results = || {
        discord
            .calls()
            .iter()
            .filter(|c| c.status < 300 && c.file("files[0]").is_some())
            .count()
    };
    let request = |id: u64| {
        let image = discord.jpeg_attachment(id + 1_000_000, 800, 600);
        dc::message(
            id,
            500,
            Some(77),
            dc::user(id, "u"),
            "/edit x",
            vec![image],
            None,
        )
    };
    let wait_results = |n: usize| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        while results() < n {
            assert!(Instant::now() < deadline, "{n} Discord results");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The final reaction follows the result.
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let since = discord.calls().len();
    for i in 0..20 {
        discord.dispatch("MESSAGE_CREATE", request(20_000 + i));
        wait_results(i as usize + 1).await;
    }
    discord_per_job(
        "jobs that do not wait (20, one at a time)",
        &discord.calls()[since..],
        20,
    );
    let since = discord.calls().len();
    for i in 0..40 {
        discord.dispatch("MESSAGE_CREATE", request(30_000 + i));
    }
    wait_results(60).await;
    discord_per_job(
        "jobs that wait (40 at once, 2 at a time)",
        &discord.calls()[since..],
        40,
    );
}

/// Prints Discord REST calls per job by method and route (ids as `*`).
fn discord_per_job(what: &str, calls: &[fakes::discord::Call], jobs: usize) {
    let routes = calls.iter().map(|c| {
        let route: Vec<&str> = c
            .segments()
            .into_iter()
            .map(|s| match s.chars().all(|ch| ch.is_ascii_digit()) {
                true => "*",
                false => s,
            })
            .collect();
        format!("{} /{}", c.method, route.join("/"))
    });
    print_per_job(&format!("Discord calls per job, {what}"), routes, jobs);
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("e2e benchmark: run with `cargo bench --bench e2e`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // E2E_ONLY=name: that part alone (e.g. `slow_group_memory` with an older `E2E_BIN`).
    let only = std::env::var("E2E_ONLY").ok();
    let runs = |name: &str| only.as_deref().is_none_or(|o| o == name);
    rt.block_on(async {
        if runs("latency_and_memory") {
            latency_and_memory().await;
        }
        if runs("group_burst") {
            group_burst().await;
        }
        if runs("throughput") {
            throughput().await;
        }
        if runs("slow_group_memory") {
            slow_group_memory().await;
        }
        if runs("discord_calls") {
            discord_calls().await;
        }
    });
}
