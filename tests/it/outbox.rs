//! The outbox on paused time: the order calls of one chat go in, replaced status edits, the
//! limits, and a 429 that pauses its own chat only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use qwen_edit_bot::core::model::{Lang, Platform, Reply};
use qwen_edit_bot::core::outbox::{Outbox, Pace, Priority, Send, Window};
use qwen_edit_bot::core::ports::chat::ChatError;
use tokio::sync::Notify;
use tokio::time::Instant;

fn to(chat: i64) -> Reply {
    Reply {
        platform: Platform::Telegram,
        chat,
        group: None,
        to: Some(1),
        user: "1".into(),
        lang: Lang::En,
        deferred: None,
        upload_limit: None,
    }
}

fn window(max: u32, secs: u64) -> Window {
    Window {
        max,
        per: Duration::from_secs(secs),
    }
}

fn outbox(chat: Window) -> Arc<Outbox> {
    let outbox = Outbox::default();
    let pace = Pace {
        chat,
        group: None,
        overall: window(1000, 1),
    };
    outbox.limit(Platform::Telegram, pace);
    Arc::new(outbox)
}

fn send(priority: Priority, on: Option<i64>) -> Send {
    Send {
        priority,
        cost: 1,
        on,
    }
}

/// Runs a call named `name` through `outbox` in its own task, recording when it ran.
fn spawn(
    outbox: &Arc<Outbox>,
    chat: i64,
    how: Send,
    name: &'static str,
    log: &Arc<Mutex<Vec<(&'static str, Instant)>>>,
) -> tokio::task::JoinHandle<Result<(), ChatError>> {
    let (outbox, log) = (Arc::clone(outbox), Arc::clone(log));
    tokio::spawn(async move {
        let reply = to(chat);
        outbox
            .run(&reply, how, || async {
                log.lock().unwrap().push((name, Instant::now()));
                Ok(())
            })
            .await
    })
}

#[tokio::test(start_paused = true)]
async fn a_chats_calls_go_results_first_and_a_newer_status_edit_replaces_a_waiting_one() {
    let outbox = outbox(window(1000, 1));
    let log = Arc::new(Mutex::new(Vec::new()));
    // The chat is busy with a call that waits until released.
    let (busy, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let holder = {
        let (outbox, busy, release) = (Arc::clone(&outbox), busy.clone(), release.clone());
        tokio::spawn(async move {
            let reply = to(5);
            outbox
                .run(&reply, send(Priority::Placeholder, None), || async {
                    busy.notify_one();
                    release.notified().await;
                    Ok(())
                })
                .await
        })
    };
    busy.notified().await;
    let old_status = spawn(
        &outbox,
        5,
        send(Priority::Status, Some(77)),
        "old status",
        &log,
    );
    tokio::task::yield_now().await;
    let other_status = spawn(
        &outbox,
        5,
        send(Priority::Status, Some(88)),
        "status of 88",
        &log,
    );
    let placeholder = spawn(
        &outbox,
        5,
        send(Priority::Placeholder, None),
        "placeholder",
        &log,
    );
    let new_status = spawn(
        &outbox,
        5,
        send(Priority::Status, Some(77)),
        "new status",
        &log,
    );
    let result = spawn(
        &outbox,
        5,
        send(Priority::Result, Some(88)),
        "result of 88",
        &log,
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    release.notify_one();
    holder.await.unwrap().unwrap();
    for call in [placeholder, new_status, result] {
        call.await.unwrap().unwrap();
    }
    assert_eq!(old_status.await.unwrap(), Err(ChatError::Superseded));
    assert_eq!(
        other_status.await.unwrap(),
        Err(ChatError::Superseded),
        "a result drops the waiting status edit of its message"
    );
    let order: Vec<&str> = log.lock().unwrap().iter().map(|(n, _)| *n).collect();
    assert_eq!(order, ["result of 88", "placeholder", "new status"]);
}

#[tokio::test(start_paused = true)]
async fn a_chats_window_spaces_its_calls_and_a_429_pauses_that_chat_only() {
    // Two calls in any second per chat (plus the margin kept for the way: 50 ms here).
    let outbox = outbox(window(2, 1));
    let log = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let calls: Vec<_> = (0..5)
        .map(|_| spawn(&outbox, 1, send(Priority::Result, None), "chat 1", &log))
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let times: Vec<Duration> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, t)| *t - start)
        .collect();
    let ms = |v: u64| Duration::from_millis(v);
    assert_eq!(times, [ms(0), ms(0), ms(1050), ms(1050), ms(2100)]);

    // Chat 2 is told to wait 5 s: its retry waits, chat 3 does not.
    log.lock().unwrap().clear();
    let start = Instant::now();
    let throttled = {
        let (outbox, log) = (Arc::clone(&outbox), Arc::clone(&log));
        tokio::spawn(async move {
            let reply = to(2);
            let mut first = true;
            outbox
                .run(&reply, send(Priority::Result, None), || {
                    let again = !std::mem::take(&mut first);
                    let log = Arc::clone(&log);
                    async move {
                        log.lock().unwrap().push(("chat 2", Instant::now()));
                        match again {
                            false => Err(ChatError::RetryAfter(
                                Some(Duration::from_secs(5)),
                                "429".into(),
                            )),
                            true => Ok(()),
                        }
                    }
                })
                .await
        })
    };
    tokio::time::sleep(ms(10)).await;
    spawn(&outbox, 3, send(Priority::Status, None), "chat 3", &log)
        .await
        .unwrap()
        .unwrap();
    // Another call of chat 2 waits for the pause too, and goes after the retried one.
    let behind = spawn(
        &outbox,
        2,
        send(Priority::Status, None),
        "chat 2 later",
        &log,
    );
    throttled.await.unwrap().unwrap();
    behind.await.unwrap().unwrap();
    let seen: Vec<(&str, Duration)> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(n, t)| (*n, *t - start))
        .collect();
    assert_eq!(
        seen,
        [
            ("chat 2", ms(0)),
            ("chat 3", ms(10)),
            ("chat 2", ms(5000)),
            ("chat 2 later", ms(5000))
        ]
    );
}

#[test]
fn limits_are_written_calls_per_seconds_and_replicas_share_them() {
    assert_eq!(Window::parse("20/60s"), Ok(window(20, 60)));
    assert_eq!(
        Window::parse(" 5/0.25s "),
        Ok(Window {
            max: 5,
            per: Duration::from_millis(250)
        })
    );
    for bad in ["20", "20/60", "x/1s", "0/1s", "1/0s", "1/4000s"] {
        assert!(Window::parse(bad).is_err(), "{bad}");
    }
    let pace = Pace {
        chat: window(3, 3),
        group: Some(window(20, 60)),
        overall: window(30, 1),
    };
    let third = pace.share(3);
    assert_eq!(
        (
            third.chat.max,
            third.group.map(|g| g.max),
            third.overall.max
        ),
        (1, Some(6), 10),
        "each replica a third, at least one"
    );
    assert_eq!(pace.share(1), pace);
}

#[tokio::test(start_paused = true)]
async fn a_result_overtakes_a_status_edit_that_waits_for_the_chats_window() {
    let outbox = outbox(window(1, 1));
    let log = Arc::new(Mutex::new(Vec::new()));
    let first = spawn(&outbox, 5, send(Priority::Placeholder, None), "first", &log);
    first.await.unwrap().unwrap();
    // The window is full for a second: the status edit waits for it, then a result comes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = spawn(&outbox, 5, send(Priority::Status, Some(7)), "status", &log);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let result = spawn(&outbox, 5, send(Priority::Result, Some(8)), "result", &log);
    result.await.unwrap().unwrap();
    status.await.unwrap().unwrap();
    let names: Vec<&str> = log.lock().unwrap().iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["first", "result", "status"]);
}

#[tokio::test(start_paused = true)]
async fn the_lanes_of_chats_gone_quiet_are_dropped() {
    let outbox = outbox(window(3, 1));
    let log = Arc::new(Mutex::new(Vec::new()));
    for chat in 0..200 {
        spawn(&outbox, chat, send(Priority::Result, None), "once", &log)
            .await
            .unwrap()
            .unwrap();
    }
    assert!(outbox.lanes() >= 100, "{} lanes", outbox.lanes());
    // A chat's history matters for its window (1 s); after it, a later call's sweep drops it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..64 {
        spawn(&outbox, 1000, send(Priority::Result, None), "later", &log)
            .await
            .unwrap()
            .unwrap();
    }
    assert!(outbox.lanes() <= 1, "{} lanes kept", outbox.lanes());
}
