//! The Telegram front-end end to end: the real `serve` path with teloxide against the fake Bot
//! API and the real DashScope client against the fake DashScope.

use std::time::Duration;

use qwen_edit_bot::config::Settings;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::fakes::dashscope::{API_KEY, FakeDashScope, Reply};
use crate::fakes::images;
use crate::fakes::telegram::{
    self as tg, FakeTelegram, Fault, TOKEN, callback_update, document_message, group_chat,
    message_update, photo_message, private_chat, text_message, user, with_media_group,
};

/// A running bot with its fakes.
struct Bot {
    tg: FakeTelegram,
    ds: FakeDashScope,
    dir: std::path::PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

const ADMIN: i64 = 900;

/// The bot's config; `extra` lines go to `[quota]`, except lines starting with `backend:`,
/// which go to `[backend]` (and a `[http]` table, which replaces the default one).
fn config(tg: &FakeTelegram, ds: &FakeDashScope, dir: &std::path::Path, extra: &str) -> String {
    let db = dir.join("q.sqlite3");
    let section = |prefix: &str| -> String {
        extra
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let (backend, telegram) = (section("backend:"), section("telegram:"));
    let tg_extra = if telegram.contains("album_wait_ms") {
        telegram
    } else {
        format!("album_wait_ms = 300\n{telegram}")
    };
    let extra: String = extra
        .lines()
        .filter(|l| !l.starts_with("backend:") && !l.starts_with("telegram:"))
        .map(|l| format!("{l}\n"))
        .collect();
    format!(
        "[backend]\nbase_url = {:?}\nmax_requests_per_second = 1000.0\nmax_concurrent = 3\n{backend}\
         [telegram]\nenabled = true\napi_url = {:?}\npoll_timeout_secs = 1\nadmin_ids = [{ADMIN}]\n{tg_extra}\
         [quota]\ndatabase = {:?}\nmax_in_flight_per_user = 3\n{}{extra}",
        ds.base_url,
        tg.url,
        db.to_str().unwrap(),
        if extra.contains("per_user") {
            ""
        } else {
            "per_user = 5\n"
        },
    ) + if extra.contains("[http]") {
        ""
    } else {
        "\n[http]\nlisten = \"\"\n"
    }
}

impl Bot {
    async fn start(extra: &str) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (tg, ds) = (FakeTelegram::start().await, FakeDashScope::start().await);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut bot = Bot {
            tg,
            ds,
            dir,
            _tmp: Some(tmp),
            stop: None,
            task: None,
        };
        bot.launch(extra);
        bot
    }

    fn launch(&mut self, extra: &str) {
        let path = self.dir.join("config.toml");
        std::fs::write(&path, config(&self.tg, &self.ds, &self.dir, extra)).unwrap();
        let env = |k: &str| match k {
            "DASHSCOPE_API_KEY" => Some(API_KEY.to_string()),
            "TELEGRAM_BOT_TOKEN" => Some(TOKEN.to_string()),
            "TELEGRAM_WEBHOOK_SECRET" => Some("hook-secret".to_string()),
            _ => None,
        };
        let settings = Settings::load_with_env(&path, env).unwrap();
        let (stop, stopped) = oneshot::channel();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(qwen_edit_bot::app::serve(settings, async {
            let _ = stopped.await;
        })));
    }

    /// Stops the bot (SIGTERM's path) and waits until it has exited.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    fn ledger(&self) -> qwen_edit_bot::store::sqlite::SqliteStore {
        qwen_edit_bot::store::sqlite::SqliteStore::open(&self.dir.join("q.sqlite3")).unwrap()
    }

    async fn used(&self, user_id: i64) -> u32 {
        use qwen_edit_bot::core::model::{Platform, UserRef};
        use qwen_edit_bot::core::ports::store::Store;
        let since = chrono::Utc::now() - chrono::Duration::days(40);
        self.ledger()
            .used(
                &UserRef::new(Platform::Telegram, user_id.to_string()),
                since,
            )
            .await
            .unwrap()
    }

    /// A photo message with `/edit …` caption from `user_id` in their private chat.
    fn photo(&self, message_id: i32, user_id: i64, caption: &str, w: u32, h: u32) -> Value {
        let file = format!("photo-{message_id}");
        self.tg.add_file(&file, images::jpeg(w, h));
        photo_message(
            message_id,
            private_chat(user_id),
            user(user_id, "en"),
            &file,
            Some(caption),
        )
    }

    /// Every text shown so far: messages, captions, and their edits.
    fn texts(&self) -> Vec<String> {
        self.tg
            .shown_texts()
            .iter()
            .map(|c| c.params["text"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    async fn text_containing(&self, needle: &str) -> Value {
        for _ in 0..500 {
            if let Some(c) = self.tg.shown_texts().into_iter().find(|c| {
                c.params["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(needle))
            }) {
                return c.params;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no message containing {needle:?}; got {:?}", self.texts());
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn reply_target(params: &Value) -> i64 {
    params["reply_parameters"]["message_id"]
        .as_i64()
        .expect("a reply")
}

/// The photo a sendPhoto carried.
fn sent_photo(call: &tg::Call) -> Vec<u8> {
    call.file("photo").expect("an uploaded photo").to_vec()
}

#[tokio::test]
async fn a_photo_captioned_edit_comes_back_as_a_photo_replying_to_it() {
    let mut bot = Bot::start("").await;
    bot.tg.push_update(message_update(bot.photo(
        10,
        42,
        "/edit make it night --seed 5",
        2048,
        1536,
    )));
    let sent = bot.tg.wait_results(1, 20).await;
    let photo = &sent[0];
    assert_eq!(photo.chat_id(), Some(42));
    assert_eq!(reply_target(&photo.params), 10);
    let caption = photo.params["caption"].as_str().unwrap();
    assert!(
        caption.contains("make it night") && caption.contains("4 edits left"),
        "{caption}"
    );
    assert_eq!(
        images::dims(&sent_photo(photo)).1,
        64,
        "the backend's result image"
    );
    assert!(photo.params["reply_markup"].to_string().contains("again:"));
    // The backend got the photo as sent (2048×1536 is in range: byte-for-byte).
    let seen = bot.ds.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].violations.is_empty(), "{:?}", seen[0].violations);
    assert_eq!(seen[0].images, vec![("image/jpeg".into(), 2048, 1536)]);
    assert_eq!(seen[0].body["parameters"]["seed"], 5);
    assert!(
        !seen[0].body.to_string().contains(TOKEN),
        "the token never reaches the backend"
    );
    // Feedback: 👀 then 👌 on the request, and while it ran a placeholder: the request's own
    // photo sent back by its file_id (no upload), replying to it, showing the prompt and the
    // state; the result went into that message, which is the only one the bot posted.
    let reactions = bot.tg.wait_for("setmessagereaction", 2, 10).await;
    assert!(reactions[0].params.to_string().contains("👀"));
    assert!(reactions[1].params.to_string().contains("👌"));
    let held = bot.tg.calls_to("sendphoto");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].str("photo"), Some("photo-10"));
    assert!(held[0].files.is_empty(), "no upload");
    assert_eq!(reply_target(&held[0].params), 10);
    let shown = held[0].params["caption"].as_str().unwrap();
    assert!(
        shown.contains("make it night") && shown.contains("Editing"),
        "{shown}"
    );
    let posted = bot.tg.sent_messages(42);
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0]["message_id"], photo.params["message_id"]);
    assert_eq!(posted[0]["caption"], photo.params["caption"]);
    bot.stop().await;
    assert_eq!(bot.used(42).await, 1);
}

#[tokio::test]
async fn a_reply_edit_to_someone_elses_photo_uses_that_photo() {
    let mut bot = Bot::start("").await;
    bot.tg.add_file("their-photo", images::png(600, 500));
    let theirs = photo_message(20, group_chat(-100), user(7, "en"), "their-photo", None);
    let mine = text_message(
        21,
        group_chat(-100),
        user(8, "en"),
        "/edit add a hat",
        Some(theirs),
    );
    bot.tg.push_update(message_update(mine));
    let sent = bot.tg.wait_results(1, 20).await;
    assert_eq!(reply_target(&sent[0].params), 21);
    assert_eq!(
        bot.ds.seen()[0].images,
        vec![("image/png".into(), 600, 500)]
    );
    bot.stop().await;
    assert_eq!((bot.used(8).await, bot.used(7).await), (1, 0));
}

#[tokio::test]
async fn commands_for_other_bots_and_plain_group_photos_are_ignored() {
    let mut bot = Bot::start("").await;
    bot.tg.add_file("p", images::jpeg(800, 600));
    let chat = group_chat(-100);
    bot.tg.push_update(message_update(photo_message(
        30,
        chat.clone(),
        user(7, "en"),
        "p",
        Some("/edit@OtherBot x"),
    )));
    bot.tg.push_update(message_update(photo_message(
        31,
        chat.clone(),
        user(7, "en"),
        "p",
        Some("nice photo"),
    )));
    bot.tg.push_update(message_update(text_message(
        32,
        chat,
        user(7, "en"),
        "/help",
        None,
    )));
    bot.text_containing("I edit images").await;
    assert_eq!(bot.ds.calls(), 0);
    assert!(bot.tg.results().is_empty());
    bot.stop().await;
}

#[tokio::test]
async fn a_captioned_photo_in_a_private_chat_is_an_edit_without_the_command() {
    let mut bot = Bot::start("").await;
    bot.tg
        .push_update(message_update(bot.photo(40, 42, "make it snow", 800, 600)));
    bot.tg.wait_results(1, 20).await;
    assert_eq!(
        bot.ds.seen()[0].body["input"]["messages"][0]["content"][1]["text"],
        "make it snow"
    );
    bot.stop().await;
}

#[tokio::test]
async fn an_image_document_is_sniffed_and_a_non_image_refunded() {
    let mut bot = Bot::start("").await;
    bot.tg.add_file("doc-img", images::png(4000, 3000));
    bot.tg
        .add_file("doc-pdf", b"%PDF-1.7 not an image".to_vec());
    let chat = private_chat(42);
    let doc = document_message(
        50,
        chat.clone(),
        user(42, "en"),
        "doc-img",
        "application/octet-stream",
        "x.bin",
        Some("/edit brighter"),
    );
    bot.tg.push_update(message_update(doc));
    bot.tg.wait_results(1, 20).await;
    assert_eq!(
        bot.ds.seen()[0].images,
        vec![("image/jpeg".into(), 2048, 1536)],
        "fitted to the useful size"
    );
    let pdf = document_message(
        51,
        chat,
        user(42, "en"),
        "doc-pdf",
        "image/png",
        "fake.png",
        Some("/edit brighter"),
    );
    bot.tg.push_update(message_update(pdf));
    let failure = bot.text_containing("not an image").await;
    assert!(failure["text"].as_str().unwrap().contains("refunded"));
    assert_eq!(reply_target(&failure), 51);
    // An image declared as something else is still an image.
    bot.tg.add_file("doc-mislabelled", images::png(800, 600));
    let mislabelled = document_message(
        52,
        private_chat(42),
        user(42, "en"),
        "doc-mislabelled",
        "application/pdf",
        "scan.pdf",
        Some("/edit brighter"),
    );
    bot.tg.push_update(message_update(mislabelled));
    bot.tg.wait_results(2, 20).await;
    assert_eq!(
        bot.ds.seen()[1].images,
        vec![("image/png".into(), 800, 600)]
    );
    bot.stop().await;
    assert_eq!(bot.used(42).await, 2);
    assert_eq!(bot.ds.calls(), 2);
}

#[tokio::test]
async fn damaged_but_plausible_files_never_reach_the_model_and_cost_nothing() {
    let mut bot = Bot::start("").await;
    // An in-range PNG with one byte of its pixels changed (its CRC no longer matches), and an
    // in-range JPEG cut before its end: both have headers good enough to pass a header check.
    let mut png = images::png(800, 600);
    let idat = png.windows(4).position(|w| w == b"IDAT").unwrap();
    png[idat + 40] ^= 0x55;
    let jpeg = images::jpeg(1280, 960);
    let cut = jpeg[..jpeg.len() * 2 / 3].to_vec();
    for (i, (id, bytes)) in [("broken-png", png), ("broken-jpeg", cut)]
        .into_iter()
        .enumerate()
    {
        bot.tg.add_file(id, bytes);
        let doc = document_message(
            60 + i as i32,
            private_chat(42),
            user(42, "en"),
            id,
            "image/png",
            "photo.png",
            Some("/edit brighter"),
        );
        bot.tg.push_update(message_update(doc));
    }
    let damaged = |c: &tg::Call| {
        c.params["text"]
            .as_str()
            .is_some_and(|t| t.contains("damaged or incomplete"))
    };
    let mut replies = Vec::new();
    for _ in 0..500 {
        replies = bot.tg.shown_texts();
        replies.retain(damaged);
        if replies.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut targets: Vec<i64> = replies.iter().map(|r| reply_target(&r.params)).collect();
    targets.sort();
    assert_eq!(targets, [60, 61], "one answer to each request");
    for reply in &replies {
        let text = reply.params["text"].as_str().unwrap();
        assert!(text.contains("refunded"), "{text}");
    }
    bot.stop().await;
    assert_eq!((bot.used(42).await, bot.ds.calls()), (0, 0));
}

#[tokio::test]
async fn an_album_with_an_edit_caption_is_one_request_with_up_to_three_images() {
    let mut bot = Bot::start("").await;
    for (i, w) in [(60, 500), (61, 600), (62, 700), (63, 800)] {
        bot.tg.add_file(&format!("a{i}"), images::jpeg(w, 500));
        let caption = (i == 60).then_some("/edit put them on a beach");
        let m = photo_message(
            i,
            group_chat(-100),
            user(7, "zh"),
            &format!("a{i}"),
            caption,
        );
        bot.tg
            .push_update(message_update(with_media_group(m, "album-1")));
    }
    bot.tg.wait_results(1, 20).await;
    let seen = bot.ds.seen();
    assert_eq!(seen.len(), 1);
    let widths: Vec<u32> = seen[0].images.iter().map(|i| i.1).collect();
    assert_eq!(widths, [500, 600, 700]);
    let caption = bot.tg.results()[0].params["caption"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(caption.contains("剩余"), "Chinese for a zh user: {caption}");
    bot.stop().await;
}

#[tokio::test]
async fn each_user_error_gets_a_clear_reply_and_costs_nothing() {
    let mut bot = Bot::start("").await;
    let chat = private_chat(42);
    let cases = [
        ("/edit make it night", "No image"),
        ("/edit --seed 3", "Say what to change"),
        ("/edit x --strength 2", "Unknown option --strength"),
        ("/edit x --n 9", "--n must be"),
    ];
    for (i, (text, _)) in cases.iter().enumerate() {
        bot.tg.push_update(message_update(text_message(
            70 + i as i32,
            chat.clone(),
            user(42, "en"),
            text,
            None,
        )));
    }
    for (_, expected) in cases {
        let reply = bot.text_containing(expected).await;
        assert!(
            reply["text"]
                .as_str()
                .unwrap()
                .contains("Nothing was charged")
        );
    }
    bot.stop().await;
    assert_eq!((bot.used(42).await, bot.ds.calls()), (0, 0));
}

#[tokio::test]
async fn over_quota_is_refused_with_the_reset_time() {
    let mut bot = Bot::start("per_user = 1\n").await;
    bot.tg
        .push_update(message_update(bot.photo(80, 42, "/edit a", 800, 600)));
    bot.tg.wait_results(1, 20).await;
    bot.tg
        .push_update(message_update(bot.photo(81, 42, "/edit b", 800, 600)));
    let reply = bot.text_containing("of your 1 edits").await;
    assert!(reply["text"].as_str().unwrap().contains("UTC"));
    bot.tg.push_update(message_update(text_message(
        82,
        private_chat(42),
        user(42, "en"),
        "/quota",
        None,
    )));
    bot.text_containing("0 of 1 edits left").await;
    bot.stop().await;
    assert_eq!(bot.ds.calls(), 1);
}

#[tokio::test]
async fn backend_failures_are_explained_and_refunded() {
    let mut bot = Bot::start("").await;
    bot.ds.script([Reply::Error {
        status: 400,
        code: "DataInspectionFailed",
        retry_after: None,
    }]);
    bot.tg
        .push_update(message_update(bot.photo(90, 42, "/edit x", 800, 600)));
    let refused = bot.text_containing("content policy").await;
    assert!(refused["text"].as_str().unwrap().contains("refunded"));
    bot.ds.script(
        [Reply::Error {
            status: 503,
            code: "ModelUnavailable",
            retry_after: None,
        }; 4],
    );
    bot.tg
        .push_update(message_update(bot.photo(91, 42, "/edit y", 800, 600)));
    let down = bot.text_containing("unavailable").await;
    assert_eq!(reply_target(&down), 91);
    let reactions = bot.tg.wait_for("setmessagereaction", 4, 10).await;
    assert!(
        reactions
            .iter()
            .filter(|r| r.params.to_string().contains("💔"))
            .count()
            == 2
    );
    bot.stop().await;
    assert_eq!(bot.used(42).await, 0);
}

#[tokio::test]
async fn a_429_on_send_is_waited_out_without_calling_the_model_again() {
    let mut bot = Bot::start("").await;
    bot.tg.fail_next(
        "editmessagemedia",
        Fault::TooManyRequests { retry_after: 1 },
        1,
    );
    bot.tg
        .push_update(message_update(bot.photo(100, 42, "/edit x", 800, 600)));
    let sent = bot.tg.wait_for("editmessagemedia", 2, 20).await;
    assert!(
        sent[1].at.duration_since(sent[0].at) >= Duration::from_millis(900),
        "retry_after honoured"
    );
    assert_eq!(bot.tg.results().len(), 1, "one result shown");
    bot.stop().await;
    assert_eq!(bot.ds.calls(), 1);
    assert_eq!(bot.used(42).await, 1);
}

#[tokio::test]
async fn again_works_after_a_restart_with_a_new_seed() {
    let mut bot = Bot::start("").await;
    bot.tg.push_update(message_update(bot.photo(
        110,
        42,
        "/edit make it night --seed 1",
        800,
        600,
    )));
    let first = bot.tg.wait_results(1, 20).await;
    let data = first[0].params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        .as_str()
        .unwrap()
        .to_owned();
    bot.stop().await;
    bot.launch("");
    // Pressed on the result message itself (the only place the button counts).
    let result_msg = bot
        .tg
        .message_with_button(42, &data)
        .expect("the result message carries the button");
    let result_id = result_msg["message_id"].as_i64().unwrap();
    bot.tg
        .push_update(callback_update("cb1", user(43, "en"), result_msg, &data));
    let sent = bot.tg.wait_results(2, 20).await;
    assert_eq!(
        reply_target(&sent[1].params),
        result_id,
        "the new result replies to the old one"
    );
    let seen = bot.ds.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].images, seen[1].images, "the same input");
    assert_eq!(
        seen[1].body["input"]["messages"][0]["content"][1]["text"],
        "make it night"
    );
    assert_ne!(seen[1].body["parameters"]["seed"], 1);
    assert_eq!(bot.tg.calls_to("answercallbackquery").len(), 1);
    bot.stop().await;
    assert_eq!(
        (bot.used(42).await, bot.used(43).await),
        (1, 1),
        "charged to whoever pressed"
    );
}

#[tokio::test]
async fn admin_commands_are_refused_to_members_and_applied_for_admins() {
    let mut bot = Bot::start("").await;
    let chat = group_chat(-100);
    let victim = text_message(120, chat.clone(), user(7, "en"), "hello", None);
    let by_member = text_message(
        121,
        chat.clone(),
        user(8, "en"),
        "/block",
        Some(victim.clone()),
    );
    bot.tg.push_update(message_update(by_member));
    bot.text_containing("Only chat admins").await;
    bot.tg.set_member_status(-100, 9, "administrator");
    let by_admin = text_message(
        122,
        chat.clone(),
        user(9, "en"),
        "/block",
        Some(victim.clone()),
    );
    bot.tg.push_update(message_update(by_admin));
    bot.text_containing("User 7 is blocked").await;
    let operator = text_message(123, chat.clone(), user(ADMIN, "en"), "/quota set 7 9", None);
    bot.tg.push_update(message_update(operator));
    bot.text_containing("User 7 may now make 9 edits").await;
    bot.tg.add_file("p7", images::jpeg(800, 600));
    bot.tg.push_update(message_update(photo_message(
        124,
        chat,
        user(7, "en"),
        "p7",
        Some("/edit x"),
    )));
    bot.text_containing("not allowed to use this bot").await;
    // The chat admin's block is for their chat: elsewhere user 7 may edit.
    let elsewhere = photo_message(125, group_chat(-200), user(7, "en"), "p7", Some("/edit y"));
    bot.tg.push_update(message_update(elsewhere));
    bot.tg.wait_results(1, 20).await;
    bot.stop().await;
    use qwen_edit_bot::core::model::{Platform, UserRef};
    use qwen_edit_bot::core::ports::store::Store;
    let s = bot
        .ledger()
        .settings(&UserRef::new(Platform::Telegram, "7"), Some("-100"))
        .await
        .unwrap();
    assert_eq!((s.blocked, s.limit_override), (true, Some(9)), "persisted");
    let bot_wide = bot
        .ledger()
        .settings(&UserRef::new(Platform::Telegram, "7"), None)
        .await
        .unwrap();
    assert_eq!(
        (bot_wide.blocked, bot_wide.limit_override),
        (false, Some(9)),
        "the operator's limit is bot-wide, the block is not"
    );
    assert_eq!(bot.ds.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_30_users_is_served_with_at_most_3_backend_calls_at_once() {
    let mut bot = Bot::start("").await;
    bot.ds.set_latency(Duration::from_millis(100));
    bot.tg.add_file("burst", images::jpeg(800, 600));
    for u in 0..30 {
        let m = photo_message(
            1,
            private_chat(5000 + u),
            user(5000 + u, "en"),
            "burst",
            Some("/edit x"),
        );
        bot.tg.push_update(message_update(m));
    }
    let sent = bot.tg.wait_results(30, 60).await;
    let mut chats: Vec<i64> = sent.iter().filter_map(|c| c.chat_id()).collect();
    chats.sort();
    chats.dedup();
    assert_eq!(chats.len(), 30, "everyone served once");
    assert_eq!(bot.ds.calls(), 30);
    assert_eq!(
        bot.ds.max_in_flight(),
        3,
        "the backend limit was reached, never passed"
    );
    bot.stop().await;
}

#[tokio::test]
async fn webhook_mode_takes_updates_only_with_the_secret() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (tg, ds) = (FakeTelegram::start().await, FakeDashScope::start().await);
    let tmp = tempfile::tempdir().unwrap();
    let mut bot = Bot {
        tg,
        ds,
        dir: tmp.path().to_owned(),
        _tmp: Some(tmp),
        stop: None,
        task: None,
    };
    let webhook = format!(
        "poll_timeout_secs = 1\nmode = \"webhook\"\nwebhook_url = \"https://bot.example/tg/hook\"\n\
         webhook_listen = \"127.0.0.1:{port}\"\n"
    );
    let text = config(&bot.tg, &bot.ds, &bot.dir, "").replace("poll_timeout_secs = 1\n", &webhook);
    let path = bot.dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    let settings = Settings::load_with_env(&path, |k| match k {
        "DASHSCOPE_API_KEY" => Some(API_KEY.to_string()),
        "TELEGRAM_BOT_TOKEN" => Some(TOKEN.to_string()),
        "TELEGRAM_WEBHOOK_SECRET" => Some("hook-secret".to_string()),
        _ => None,
    })
    .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    bot.stop = Some(stop);
    bot.task = Some(tokio::spawn(qwen_edit_bot::app::serve(settings, async {
        let _ = stopped.await;
    })));
    let set = bot.tg.wait_for("setwebhook", 1, 10).await;
    assert_eq!(set[0].params["url"], "https://bot.example/tg/hook");
    assert_eq!(set[0].params["secret_token"], "hook-secret");
    let update = json!({ "update_id": 1, "message": bot.photo(130, 42, "/edit x", 800, 600) });
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/tg/hook");
    let mut status = 0;
    for _ in 0..100 {
        match client.post(&url).json(&update).send().await {
            Ok(r) => {
                status = r.status().as_u16();
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(status, 401, "no secret, no update");
    let wrong = client
        .post(&url)
        .header("X-Telegram-Bot-Api-Secret-Token", "nope")
        .json(&update)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let ok = client
        .post(&url)
        .header("X-Telegram-Bot-Api-Secret-Token", "hook-secret")
        .json(&update)
        .send()
        .await
        .unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    bot.tg.wait_results(1, 20).await;
    assert_eq!(bot.ds.calls(), 1);
    bot.stop().await;
}

#[tokio::test]
async fn several_results_come_as_an_album_then_the_caption_with_the_again_button() {
    let mut bot = Bot::start("").await;
    bot.tg.push_update(message_update(bot.photo(
        140,
        42,
        "/edit@QwenEditBot two cats --n 2",
        800,
        600,
    )));
    // The placeholder: an album of the request's photo, twice, by file_id, and the text.
    let album = bot.tg.wait_for("sendmediagroup", 1, 20).await;
    let media = album[0].params["media"].as_array().unwrap().clone();
    assert_eq!(media.len(), 2);
    for item in &media {
        assert_eq!(
            (item["type"].as_str(), item["media"].as_str()),
            (Some("photo"), Some("photo-140"))
        );
    }
    assert!(album[0].files.is_empty(), "no upload");
    assert_eq!(reply_target(&album[0].params), 140);
    // The results go into the album's items, then the text becomes the caption with 🔁.
    let results = bot.tg.wait_results(2, 20).await;
    for result in &results {
        assert_eq!(result.method, "sendphoto");
        assert_eq!(images::dims(result.file("photo").unwrap()).1, 64);
        assert_eq!(reply_target(&result.params), 140);
    }
    let caption = bot.tg.wait_for("editmessagetext", 1, 20).await.remove(0);
    assert!(
        caption.params["text"]
            .as_str()
            .unwrap()
            .contains("two cats")
    );
    assert!(
        caption.params["reply_markup"]
            .to_string()
            .contains("again:")
    );
    let posted = bot.tg.sent_messages(42);
    assert_eq!(
        posted.len(),
        3,
        "two images and the caption, nothing else: {posted:?}"
    );
    assert_eq!(bot.ds.seen()[0].body["parameters"]["n"], 2);
    bot.stop().await;
    assert_eq!(bot.used(42).await, 2);
}

#[tokio::test]
async fn a_result_beyond_telegrams_photo_limits_is_sent_as_a_document() {
    let mut bot = Bot::start("").await;
    bot.ds.set_result_size(9000, 2000);
    bot.tg.push_update(message_update(bot.photo(
        150,
        42,
        "/edit panorama",
        800,
        600,
    )));
    let doc = bot.tg.wait_results(1, 20).await;
    assert_eq!(
        doc[0].method, "senddocument",
        "the photo placeholder became a document"
    );
    assert_eq!(images::dims(doc[0].file("document").unwrap()).1, 9000);
    assert!(
        doc[0].params["caption"]
            .as_str()
            .unwrap()
            .contains("panorama")
    );
    assert_eq!(reply_target(&doc[0].params), 150);
    bot.stop().await;
}

#[tokio::test]
async fn waiting_jobs_are_told_their_place_in_the_queue() {
    let mut bot = Bot::start("").await;
    bot.ds.set_latency(Duration::from_millis(400));
    for u in 0..5 {
        let m = bot.photo(160 + u as i32, 6000 + u, "/edit x", 800, 600);
        bot.tg.push_update(message_update(m));
    }
    // Workers pick jobs up concurrently, so the exact places vary; someone must wait.
    let queued = bot.text_containing("In the queue").await;
    let text = queued["text"].as_str().unwrap();
    assert!(
        text.contains("ahead of you") || text.contains("you are next"),
        "{text}"
    );
    let results = bot.tg.wait_results(5, 30).await;
    // The place was the placeholder's caption: no status message of its own to clean up, and
    // each result went into its request's placeholder.
    assert!(bot.tg.calls_to("sendmessage").is_empty());
    assert!(bot.tg.calls_to("deletemessage").is_empty());
    let mut targets: Vec<i64> = results.iter().map(|r| reply_target(&r.params)).collect();
    targets.sort();
    assert_eq!(targets, [160, 161, 162, 163, 164]);
    bot.stop().await;
}

#[tokio::test]
async fn setup_usage_and_unfit_images_behave() {
    let mut bot = Bot::start("").await;
    let cmds = bot.tg.wait_for("setmycommands", 2, 10).await;
    assert!(cmds.iter().any(|c| c.params["language_code"] == "zh"));
    bot.tg
        .push_update(message_update(bot.photo(170, 42, "/edit x", 800, 600)));
    bot.tg.wait_results(1, 20).await;
    bot.tg.add_file("thin", images::png(100, 5000));
    let thin = photo_message(
        171,
        private_chat(42),
        user(42, "en"),
        "thin",
        Some("/edit x"),
    );
    bot.tg.push_update(message_update(thin));
    let unfit = bot.text_containing("too long and narrow").await;
    assert!(unfit["text"].as_str().unwrap().contains("refunded"));
    let usage = text_message(172, group_chat(-5), user(ADMIN, "en"), "/usage", None);
    bot.tg.push_update(message_update(usage));
    let report = bot.text_containing("Images delivered since").await;
    assert!(
        report["text"].as_str().unwrap().contains("42 — 1"),
        "{}",
        report["text"]
    );
    // A chat's own administrator sees that chat's usage only (user 42 edited in private).
    bot.tg.add_file("in-group", images::jpeg(800, 600));
    let in_group = photo_message(
        173,
        group_chat(-5),
        user(43, "en"),
        "in-group",
        Some("/edit y"),
    );
    bot.tg.push_update(message_update(in_group));
    bot.tg.wait_results(2, 20).await;
    bot.tg.set_member_status(-5, 77, "administrator");
    let local = text_message(174, group_chat(-5), user(77, "en"), "/usage", None);
    bot.tg.push_update(message_update(local));
    let local = bot.text_containing("43 — 1 (1 jobs, 0 failed)").await;
    assert_eq!(reply_target(&local), 174);
    let text = local["text"].as_str().unwrap();
    assert!(!text.contains("42 —"), "{text}");
    for c in bot.tg.calls() {
        assert!(
            !c.params.to_string().contains(TOKEN),
            "the token reached a chat: {}",
            c.method
        );
    }
    bot.stop().await;
}

#[tokio::test]
async fn updates_are_confirmed_on_exit_and_those_sent_while_down_are_handled_after_a_restart() {
    let mut bot = Bot::start("").await;
    let first = bot
        .tg
        .push_update(message_update(bot.photo(180, 42, "/edit a", 800, 600)));
    bot.tg.wait_results(1, 20).await;
    bot.stop().await;
    assert_eq!(bot.tg.last_offset(), first + 1, "confirmed on the way out");
    // Sent while the bot is down: handled after the restart.
    bot.tg
        .push_update(message_update(bot.photo(181, 42, "/edit b", 800, 600)));
    bot.launch("");
    let sent = bot.tg.wait_results(2, 20).await;
    assert_eq!(reply_target(&sent[1].params), 181);
    bot.stop().await;
    assert_eq!(bot.tg.pending_updates(), 0);
    assert_eq!(bot.used(42).await, 2);
}

#[tokio::test]
async fn where_reactions_are_not_allowed_the_placeholder_alone_says_the_job_was_taken() {
    let mut bot = Bot::start("").await;
    bot.tg.fail_next(
        "setmessagereaction",
        Fault::BadRequest("Bad Request: REACTION_INVALID"),
        1,
    );
    bot.tg
        .push_update(message_update(bot.photo(190, 42, "/edit x", 800, 600)));
    let status = bot.text_containing("Editing").await;
    assert_eq!(reply_target(&status), 190);
    let result = bot.tg.wait_results(1, 20).await.remove(0);
    assert_eq!(reply_target(&result.params), 190);
    bot.stop().await;
    assert!(
        bot.tg.calls_to("sendmessage").is_empty(),
        "no status message of its own"
    );
    assert!(bot.tg.calls_to("deletemessage").is_empty());
    assert_eq!(
        bot.tg.sent_messages(42).len(),
        1,
        "the placeholder became the result"
    );
}

#[tokio::test]
async fn a_full_queue_says_busy_and_charges_nothing() {
    let mut bot = Bot::start("max_queue = 1\n").await;
    bot.ds.set_latency(Duration::from_millis(1500));
    for u in 0..3 {
        bot.tg.push_update(message_update(bot.photo(
            200 + u as i32,
            7000 + u,
            "/edit x",
            800,
            600,
        )));
        for _ in 0..200 {
            if bot.ds.calls() == u as usize + 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(bot.ds.calls(), 3, "three workers busy");
    bot.tg.push_update(message_update(bot.photo(
        210,
        7010,
        "/edit waits",
        800,
        600,
    )));
    bot.text_containing("In the queue").await;
    bot.tg.push_update(message_update(bot.photo(
        211,
        7011,
        "/edit too many",
        800,
        600,
    )));
    let busy = bot.text_containing("busy").await;
    assert_eq!(reply_target(&busy), 211);
    bot.tg.wait_results(4, 30).await;
    bot.stop().await;
    assert_eq!((bot.used(7010).await, bot.used(7011).await), (1, 0));
}

#[tokio::test]
async fn every_backend_fault_ends_with_a_message_and_the_quota_back() {
    let mut bot = Bot::start("backend:timeout_secs = 1\nbackend:max_attempts = 2\n").await;
    let faults: Vec<(Vec<Reply>, &str)> = vec![
        (
            vec![
                Reply::Error {
                    status: 429,
                    code: "Throttling.RateQuota",
                    retry_after: Some("0")
                };
                2
            ],
            "busy",
        ),
        (
            vec![
                Reply::Error {
                    status: 500,
                    code: "InternalError",
                    retry_after: None
                };
                2
            ],
            "unavailable",
        ),
        (vec![Reply::Hang; 2], "took too long"),
        (vec![Reply::Malformed], "unusable"),
        (vec![Reply::MissingResult], "unusable"),
        (
            vec![Reply::Error {
                status: 401,
                code: "InvalidApiKey",
                retry_after: None,
            }],
            "refused the bot's API key. Please tell the bot's operator",
        ),
        (
            vec![Reply::Error {
                status: 400,
                code: "Arrearage",
                retry_after: None,
            }],
            "out of credit. Please tell the bot's operator",
        ),
    ];
    for (i, (script, expected)) in faults.into_iter().enumerate() {
        bot.ds.script(script);
        let message_id = 300 + i as i32;
        bot.tg.push_update(message_update(
            bot.photo(message_id, 42, "/edit x", 800, 600),
        ));
        // Wait for this job's answer before the next fault is scripted.
        let mut told = None;
        for _ in 0..1000 {
            told = bot.tg.shown_texts().into_iter().find(|c| {
                c.params["reply_parameters"]["message_id"].as_i64() == Some(i64::from(message_id))
                    && c.method == "editmessagecaption"
            });
            if told.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let text = told.expect("an answer").params["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            text.contains(expected) && text.contains("refunded"),
            "{expected}: {text}"
        );
    }
    bot.stop().await;
    assert_eq!(bot.used(42).await, 0);
    assert!(bot.tg.results().is_empty());
}

#[tokio::test]
async fn a_server_error_on_send_is_retried_and_the_result_still_arrives() {
    let mut bot = Bot::start("").await;
    bot.tg.fail_next("editmessagemedia", Fault::ServerError, 1);
    bot.tg
        .push_update(message_update(bot.photo(320, 42, "/edit x", 800, 600)));
    bot.tg.wait_for("editmessagemedia", 2, 40).await;
    let sent = bot.tg.wait_results(1, 10).await;
    assert_eq!(sent.len(), 1, "one result shown");
    assert_eq!(reply_target(&sent[0].params), 320);
    bot.stop().await;
    assert_eq!((bot.ds.calls(), bot.used(42).await), (1, 1));
}

#[tokio::test]
async fn an_album_being_collected_at_shutdown_is_handled_after_the_restart() {
    let mut bot = Bot::start("telegram:album_wait_ms = 3000\n").await;
    for (i, w) in [(400, 500), (401, 600)] {
        bot.tg.add_file(&format!("al{i}"), images::jpeg(w, 500));
        let caption = (i == 400).then_some("/edit make them glow");
        let m = photo_message(
            i,
            private_chat(42),
            user(42, "en"),
            &format!("al{i}"),
            caption,
        );
        bot.tg
            .push_update(message_update(with_media_group(m, "album-restart")));
    }
    // Wait until the bot has fetched both parts, then stop while it still collects.
    for _ in 0..200 {
        if bot.tg.polls().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bot.stop().await;
    assert_eq!(bot.ds.calls(), 0, "nothing was submitted yet");
    // The parts are kept in the store, so their updates could be confirmed at once.
    use qwen_edit_bot::core::ports::store::Store;
    assert_eq!(
        bot.ledger().album_groups().await.unwrap(),
        ["42:album-restart"],
        "the album's parts are in the store"
    );
    assert_eq!(
        bot.ledger()
            .album_parts("42:album-restart")
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(bot.tg.pending_updates(), 0, "and its updates confirmed");
    bot.launch("telegram:album_wait_ms = 300\n");
    bot.tg.wait_results(1, 20).await;
    let seen = bot.ds.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].images.iter().map(|i| i.1).collect::<Vec<_>>(),
        [500, 600]
    );
    bot.stop().await;
    assert_eq!(bot.tg.pending_updates(), 0);
    assert!(
        bot.ledger().album_groups().await.unwrap().is_empty(),
        "forgotten once handled"
    );
}

/// A photo with `caption` from `user_id` in group `chat_id`.
fn group_photo(bot: &Bot, message_id: i32, chat_id: i64, user_id: i64, caption: &str) -> Value {
    let file = format!("g-{message_id}");
    bot.tg.add_file(&file, images::jpeg(800, 600));
    photo_message(
        message_id,
        group_chat(chat_id),
        user(user_id, "en"),
        &file,
        Some(caption),
    )
}

#[tokio::test]
async fn a_group_admin_cannot_grant_themselves_edits_but_can_restrict_others() {
    let mut bot = Bot::start("per_user = 2\n").await;
    let chat = group_chat(-500);
    bot.tg.set_member_status(-500, 50, "creator");
    let say = |id: i32, from: i64, text: &str| {
        message_update(text_message(id, chat.clone(), user(from, "en"), text, None))
    };
    bot.tg.push_update(say(1, 50, "/quota set 50 1000000"));
    bot.text_containing("at most 1000000 edits per window here (the bot-wide limit still applies)")
        .await;
    bot.tg.push_update(say(2, 50, "/quota reset 50"));
    bot.text_containing("Only the bot's operator can reset usage")
        .await;
    for i in 0..3 {
        bot.tg.push_update(message_update(group_photo(
            &bot,
            10 + i,
            -500,
            50,
            "/edit x",
        )));
        if i < 2 {
            bot.tg.wait_results(i as usize + 1, 20).await;
        }
    }
    bot.text_containing("of your 2 edits").await;
    // Restricting works: another member's limit here goes to 0.
    bot.tg.push_update(say(20, 50, "/quota set 51 0"));
    bot.text_containing("User 51 may now make at most 0 edits")
        .await;
    bot.tg
        .push_update(message_update(group_photo(&bot, 21, -500, 51, "/edit y")));
    bot.text_containing("Editing is turned off here").await;
    bot.stop().await;
    assert_eq!(bot.ds.calls(), 2, "the self-grant gave nothing");
    assert_eq!((bot.used(50).await, bot.used(51).await), (2, 0));
    use qwen_edit_bot::core::model::{Platform, UserRef};
    use qwen_edit_bot::core::ports::store::Store;
    let bot_wide = bot
        .ledger()
        .settings(&UserRef::new(Platform::Telegram, "50"), None)
        .await
        .unwrap();
    assert_eq!(
        (bot_wide.limit_override, bot_wide.reset_after),
        (None, None),
        "nothing bot-wide changed"
    );
}

#[tokio::test]
async fn results_the_users_chat_refuses_are_charged_and_count_for_the_day() {
    // The group's limit is lifted: ten albums of six would take minutes at Telegram's.
    let mut bot = Bot::start(
        "per_user = 100\nglobal_per_day = 25\ntelegram:limit_per_group = \"1000/60s\"\n",
    )
    .await;
    // A private chat that blocked the bot while the job ran: charged 1.
    bot.tg.fail_next(
        "editmessagemedia",
        Fault::Forbidden("Forbidden: bot was blocked by the user"),
        1,
    );
    bot.tg
        .push_update(message_update(bot.photo(30, 61, "/edit x", 800, 600)));
    bot.text_containing("did not let me post").await;
    // A group where the bot may not send photos: every --n 6 is made, refused, charged.
    bot.tg.fail_next(
        "editmessagemedia",
        Fault::BadRequest("Bad Request: not enough rights to send photos to the chat"),
        10,
    );
    // Each one waits for its answer, so the model is asked in turn; the day's budget is spent
    // by the fourth. The remaining six are refused (their identical refusals answered once).
    for i in 0..10 {
        bot.tg.push_update(message_update(group_photo(
            &bot,
            40 + i,
            -600,
            60,
            "/edit x --n 6",
        )));
        if i < 4 {
            let told = 2 + i as usize;
            for _ in 0..500 {
                let n = bot
                    .texts()
                    .iter()
                    .filter(|t| t.contains("did not let me post"))
                    .count();
                if n >= told {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    bot.text_containing("daily limit").await;
    let texts = bot.texts();
    let refused = texts
        .iter()
        .filter(|t| t.contains("did not let me post"))
        .count();
    let daily = texts.iter().filter(|t| t.contains("daily limit")).count();
    assert_eq!((refused, daily), (5, 1), "{texts:?}");
    assert!(
        texts
            .iter()
            .filter(|t| t.contains("did not let me post"))
            .all(|t| t.contains("count against your quota")),
        "{texts:?}"
    );
    bot.stop().await;
    assert_eq!(
        bot.ds.calls(),
        5,
        "1 + 4 × 6 = 25 images, then the day is over"
    );
    assert_eq!((bot.used(61).await, bot.used(60).await), (1, 24));
    use qwen_edit_bot::core::ports::store::{ReportBy, Store};
    let since = chrono::Utc::now() - chrono::Duration::days(1);
    let rows = bot
        .ledger()
        .report(since, None, ReportBy::User, None)
        .await
        .unwrap();
    let group_user = rows.iter().find(|r| r.key == "telegram:60").unwrap();
    assert_eq!(
        (
            group_user.images,
            group_user.generated,
            group_user.undelivered
        ),
        (0, 24, 24)
    );
}

#[tokio::test]
async fn again_is_refused_anywhere_but_under_the_result_it_belongs_to() {
    let mut bot = Bot::start("").await;
    bot.tg
        .push_update(message_update(bot.photo(70, 42, "/edit secret", 800, 600)));
    let first = bot.tg.wait_results(1, 20).await;
    let data = first[0].params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = data.strip_prefix("again:").unwrap();
    assert!(
        token.len() == 32 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "an unguessable token, not the job id: {data}"
    );
    let downloads = bot.tg.downloads().len();
    // Another user copies the token into a button of their own chat, or guesses a job id.
    let elsewhere = text_message(5, group_chat(-700), user(tg::BOT_ID, "en"), "mine", None);
    bot.tg.push_update(callback_update(
        "cb-forged",
        user(77, "en"),
        elsewhere.clone(),
        &data,
    ));
    bot.tg.push_update(callback_update(
        "cb-guessed",
        user(77, "en"),
        elsewhere,
        "again:tg-42-70",
    ));
    let answers = bot.tg.wait_for("answercallbackquery", 2, 20).await;
    for a in &answers {
        assert!(
            a.params["text"].as_str().unwrap().contains("expired"),
            "{:?}",
            a.params
        );
    }
    bot.stop().await;
    assert_eq!(bot.ds.calls(), 1, "no backend call for a forged button");
    assert_eq!(bot.tg.downloads().len(), downloads, "nothing fetched");
    assert_eq!(bot.used(77).await, 0);
    assert!(
        bot.tg.calls_to("sendmessage").is_empty() && bot.tg.results().len() == 1,
        "nothing posted into the other chat"
    );
}

#[tokio::test]
async fn a_second_daemon_on_the_same_database_refuses_to_start() {
    let mut bot = Bot::start("").await;
    bot.tg
        .push_update(message_update(bot.photo(90, 42, "/edit x", 800, 600)));
    bot.tg.wait_results(1, 20).await;
    let path = bot.dir.join("config.toml");
    let env = |k: &str| match k {
        "DASHSCOPE_API_KEY" => Some(API_KEY.to_string()),
        "TELEGRAM_BOT_TOKEN" => Some(TOKEN.to_string()),
        _ => None,
    };
    let settings = Settings::load_with_env(&path, env).unwrap();
    let second = tokio::time::timeout(
        Duration::from_secs(10),
        qwen_edit_bot::app::serve(settings, std::future::pending()),
    )
    .await
    .expect("refused at once")
    .unwrap_err()
    .to_string();
    assert!(
        second.contains("another qwen-edit-bot is already running"),
        "{second}"
    );
    bot.stop().await;
    assert_eq!(bot.ds.calls(), 1);
    assert_eq!(bot.tg.results().len(), 1);
}

#[tokio::test]
async fn an_update_seen_again_while_its_job_runs_leaves_its_feedback_alone() {
    let mut bot = Bot::start("").await;
    bot.ds.hold();
    let update = bot.photo(95, 42, "/edit x", 800, 600);
    bot.tg.push_update(message_update(update.clone()));
    bot.tg.wait_for("sendphoto", 1, 20).await;
    // The same message again (a re-sent update) while the job runs.
    bot.tg.push_update(message_update(update));
    for _ in 0..500 {
        if bot.tg.last_offset() >= 2 && bot.tg.pending_updates() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bot.ds.release();
    bot.tg.wait_results(1, 20).await;
    let reactions = bot.tg.wait_for("setmessagereaction", 2, 10).await;
    assert!(
        reactions[1].params.to_string().contains("👌"),
        "the running job's 👀 still turns into 👌: {:?}",
        reactions[1].params
    );
    bot.stop().await;
    assert_eq!(
        bot.tg.calls_to("sendphoto").len(),
        1,
        "the duplicate posted no second placeholder"
    );
    assert_eq!(bot.tg.results().len(), 1);
    assert_eq!(
        bot.tg.sent_messages(42).len(),
        1,
        "the one placeholder became the result"
    );
    assert_eq!((bot.ds.calls(), bot.used(42).await), (1, 1));
}

/// The first `setMessageReaction` on a message of `chat_id`, when it reached the fake.
async fn reaction_in(bot: &Bot, chat_id: i64, secs: u64) -> std::time::Instant {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let found = bot
            .tg
            .calls_to("setmessagereaction")
            .into_iter()
            .find(|c| c.chat_id() == Some(chat_id));
        if let Some(c) = found {
            return c.at;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reaction in chat {chat_id}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_flood_of_refusals_in_one_chat_neither_stalls_another_chat_nor_floods_its_own() {
    let mut bot = Bot::start("").await;
    // Telegram is slow to take messages: every refusal would hang on it.
    bot.tg.hold("sendmessage");
    for i in 0..300 {
        bot.tg.push_update(message_update(text_message(
            1000 + i,
            group_chat(-800),
            user(80, "en"),
            "/edit make it night",
            None,
        )));
    }
    let pushed = std::time::Instant::now();
    bot.tg
        .push_update(message_update(bot.photo(20, 81, "/edit x", 800, 600)));
    let reacted = reaction_in(&bot, 81, 20).await;
    assert!(
        reacted.duration_since(pushed) < Duration::from_secs(1),
        "the other chat waited {:?} for its 👀",
        reacted.duration_since(pushed)
    );
    bot.tg.wait_results(1, 20).await;
    bot.tg.release("sendmessage");
    bot.stop().await;
    let refusals = bot
        .tg
        .calls_to("sendmessage")
        .into_iter()
        .filter(|c| c.chat_id() == Some(-800))
        .count();
    assert_eq!(refusals, 1, "one answer for 300 identical mistakes");
    assert_eq!((bot.ds.calls(), bot.used(80).await), (1, 0));
}

#[tokio::test]
async fn a_server_error_on_a_call_for_one_chat_does_not_delay_another() {
    let mut bot = Bot::start("").await;
    // teloxide waits 10 s after a 5xx before it returns the error.
    bot.tg
        .fail_next("setmessagereaction", Fault::ServerError, 1);
    bot.tg
        .push_update(message_update(bot.photo(30, 82, "/edit a", 800, 600)));
    reaction_in(&bot, 82, 20).await;
    let pushed = std::time::Instant::now();
    bot.tg
        .push_update(message_update(bot.photo(31, 83, "/edit b", 800, 600)));
    let reacted = reaction_in(&bot, 83, 20).await;
    assert!(
        reacted.duration_since(pushed) < Duration::from_secs(1),
        "the other chat waited {:?}",
        reacted.duration_since(pushed)
    );
    bot.tg.wait_results(2, 30).await;
    bot.stop().await;
    assert_eq!((bot.used(82).await, bot.used(83).await), (1, 1));
}

/// A port with nothing listening on it yet.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// From `after` on, forwards connections on 127.0.0.1:`port` to `to` (Telegram becomes
/// reachable).
fn forward_later(port: u16, to: std::net::SocketAddr, after: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(to).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
}

/// Runs `serve` on `config` with the test secrets (and `token` as the Telegram token).
fn serve_config(
    dir: &std::path::Path,
    config: String,
    token: &'static str,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    let settings = Settings::load_with_env(&path, |k| match k {
        "DASHSCOPE_API_KEY" => Some(API_KEY.to_string()),
        "TELEGRAM_BOT_TOKEN" => Some(token.to_string()),
        "DISCORD_TOKEN" => Some("discord-token".to_string()),
        _ => None,
    })
    .unwrap();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(qwen_edit_bot::app::serve(settings, async {
        let _ = stopped.await;
    }));
    (stop, task)
}

#[tokio::test]
async fn telegram_unreachable_at_start_is_waited_for_and_then_served_without_a_restart() {
    let (tg, ds) = (FakeTelegram::start().await, FakeDashScope::start().await);
    let tmp = tempfile::tempdir().unwrap();
    let port = closed_port();
    let fake_addr: std::net::SocketAddr = reqwest::Url::parse(&tg.url)
        .unwrap()
        .socket_addrs(|| None)
        .unwrap()[0];
    let config = config(&tg, &ds, tmp.path(), "").replace(
        &format!("api_url = {:?}", tg.url),
        &format!("api_url = \"http://127.0.0.1:{port}\""),
    );
    let (stop, task) = serve_config(tmp.path(), config, TOKEN);
    // The network comes back two seconds after the start.
    forward_later(port, fake_addr, Duration::from_secs(2));
    tg.add_file("late", images::jpeg(800, 600));
    tg.push_update(message_update(photo_message(
        1,
        private_chat(42),
        user(42, "en"),
        "late",
        Some("/edit x"),
    )));
    tg.wait_results(1, 30).await;
    assert!(!task.is_finished(), "still running");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ds.calls(), 1);
}

#[tokio::test]
async fn telegram_serves_while_discord_cannot_be_reached() {
    let (tg, ds) = (FakeTelegram::start().await, FakeDashScope::start().await);
    let tmp = tempfile::tempdir().unwrap();
    let discord = format!(
        "[discord]\nenabled = true\napi_url = \"http://127.0.0.1:{}\"\n",
        closed_port()
    );
    let config = config(&tg, &ds, tmp.path(), "") + &discord;
    let (stop, task) = serve_config(tmp.path(), config, TOKEN);
    for i in 0..2 {
        let file = format!("p{i}");
        tg.add_file(&file, images::jpeg(800, 600));
        tg.push_update(message_update(photo_message(
            10 + i,
            private_chat(42),
            user(42, "en"),
            &file,
            Some("/edit x"),
        )));
        tg.wait_results(i as usize + 1, 30).await;
    }
    assert!(!task.is_finished(), "Discord's outage stops nothing");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_refused_bot_token_is_final_and_says_so() {
    let (tg, ds) = (FakeTelegram::start().await, FakeDashScope::start().await);
    let tmp = tempfile::tempdir().unwrap();
    let (_stop, task) = serve_config(tmp.path(), config(&tg, &ds, tmp.path(), ""), "1:wrong");
    let err = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("exits at once")
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refused the bot token") && err.contains("TELEGRAM_BOT_TOKEN"),
        "{err}"
    );
    assert!(!err.contains("1:wrong"), "the token is never shown: {err}");
}

/// Reads from `stream` until the server closes it or `secs` pass; what it sent.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, secs: u64) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(secs), stream.read_to_end(&mut got)).await;
    read.ok()
        .map(|_| String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn the_listeners_shed_idle_slow_and_unauthenticated_clients() {
    use tokio::io::AsyncWriteExt;
    let (hook_port, ops_port) = (closed_port(), closed_port());
    let (tg, ds) = (FakeTelegram::start().await, FakeDashScope::start().await);
    let tmp = tempfile::tempdir().unwrap();
    let webhook = format!(
        "poll_timeout_secs = 1\nmode = \"webhook\"\nwebhook_url = \"https://bot.example/tg/hook\"\n\
         webhook_listen = \"127.0.0.1:{hook_port}\"\n"
    );
    let http = format!(
        "[http]\nlisten = \"127.0.0.1:{ops_port}\"\nheader_timeout_ms = 300\nmax_connections = 4\n"
    );
    let text = config(&tg, &ds, tmp.path(), &http).replace("poll_timeout_secs = 1\n", &webhook);
    let path = tmp.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let settings = Settings::load_with_env(&path, |k| match k {
        "DASHSCOPE_API_KEY" => Some(API_KEY.to_string()),
        "TELEGRAM_BOT_TOKEN" => Some(TOKEN.to_string()),
        "TELEGRAM_WEBHOOK_SECRET" => Some("hook-secret".to_string()),
        _ => None,
    })
    .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(qwen_edit_bot::app::serve(settings, async {
        let _ = stopped.await;
    }));
    tg.wait_for("setwebhook", 1, 10).await;
    let connect = |port: u16| tokio::net::TcpStream::connect(("127.0.0.1", port));
    // Idle connections (no request) are closed after the header timeout, on both listeners.
    for port in [hook_port, ops_port] {
        let mut idle = connect(port).await.unwrap();
        let started = std::time::Instant::now();
        read_until_closed(&mut idle, 5)
            .await
            .expect("closed by the server");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
            "closed after {waited:?}"
        );
    }
    // Without the secret, a request announcing 100 MB is refused before its body is sent.
    let mut unauthenticated = connect(hook_port).await.unwrap();
    unauthenticated
        .write_all(
            b"POST /tg/hook HTTP/1.1\r\nHost: bot\r\nContent-Type: application/json\r\n\
              Content-Length: 100000000\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut unauthenticated, 5)
        .await
        .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");
    // With the secret, a body that trickles in is cut at the request timeout (5 × 300 ms).
    let mut slow = connect(hook_port).await.unwrap();
    slow.write_all(
        b"POST /tg/hook HTTP/1.1\r\nHost: bot\r\nContent-Type: application/json\r\n\
          X-Telegram-Bot-Api-Secret-Token: hook-secret\r\nContent-Length: 5000\r\n\r\n{\"upd",
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let answer = read_until_closed(&mut slow, 10).await.expect("cut");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
    // A body over the update limit is refused.
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{hook_port}/tg/hook");
    let big = client
        .post(&url)
        .header("X-Telegram-Bot-Api-Secret-Token", "hook-secret")
        .body(vec![b' '; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status().as_u16(), 413);
    // All 4 connection slots held by idle clients: a real update still gets through once the
    // header timeout has freed them.
    let mut hogs = Vec::new();
    for _ in 0..4 {
        hogs.push(connect(hook_port).await.unwrap());
    }
    tg.add_file("hooked", images::jpeg(800, 600));
    let update = json!({ "update_id": 7, "message": photo_message(
        140, private_chat(42), user(42, "en"), "hooked", Some("/edit x")) });
    let started = std::time::Instant::now();
    let ok = client
        .post(&url)
        .header("X-Telegram-Bot-Api-Secret-Token", "hook-secret")
        .json(&update)
        .send()
        .await
        .unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    tg.wait_results(1, 20).await;
    drop(hogs);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ds.calls(), 1);
}

/// Pushes `updates` and returns how long until Telegram saw all of them confirmed.
async fn time_to_confirm(bot: &Bot, updates: Vec<Value>) -> Duration {
    let started = std::time::Instant::now();
    let mut last = 0;
    for u in updates {
        last = bot.tg.push_update(u);
    }
    while bot.tg.last_offset() <= last {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never confirmed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn albums_being_collected_do_not_slow_the_intake_of_other_updates() {
    let mut bot = Bot::start("telegram:album_wait_ms = 2000\n").await;
    let chatter = |base: i32, n: i32| -> Vec<Value> {
        (0..n)
            .map(|i| {
                message_update(text_message(
                    base + i,
                    group_chat(-900 - i64::from(i % 7)),
                    user(100 + i64::from(i % 7), "en"),
                    "hello everyone",
                    None,
                ))
            })
            .collect()
    };
    let plain = time_to_confirm(&bot, chatter(10_000, 2000)).await;
    // The same again with 20 album photos (10 albums of 2) among them.
    let mut mixed = chatter(20_000, 1980);
    for a in 0..10 {
        for p in 0..2 {
            let id = 30_000 + a * 2 + p;
            let file = format!("alb{id}");
            bot.tg.add_file(&file, images::jpeg(600, 400));
            let caption = (p == 0).then_some("/edit brighter");
            let who = user(150 + i64::from(a), "en");
            let m = photo_message(id, group_chat(-950 - i64::from(a)), who, &file, caption);
            let at = (a * 198 + p) as usize;
            mixed.insert(at, message_update(with_media_group(m, &format!("ab{a}"))));
        }
    }
    let with_albums = time_to_confirm(&bot, mixed).await;
    assert!(
        with_albums < plain * 2 + Duration::from_millis(300),
        "2000 updates: {plain:?} plain, {with_albums:?} with albums being collected"
    );
    assert!(
        with_albums < Duration::from_secs(2),
        "confirmed before the albums were done"
    );
    // And every album became one job.
    bot.tg.wait_results(10, 30).await;
    bot.stop().await;
    assert_eq!(bot.ds.calls(), 10);
}

#[tokio::test]
async fn an_update_stuck_on_a_telegram_call_holds_only_its_own_chat() {
    let mut bot = Bot::start("").await;
    // A button press whose answer hangs: its chat's worker waits on it.
    bot.tg.hold("answercallbackquery");
    let pressed_on = text_message(5, group_chat(-1000), user(tg::BOT_ID, "en"), "old", None);
    bot.tg.push_update(callback_update(
        "cb-stuck",
        user(90, "en"),
        pressed_on,
        "again:0123456789abcdef0123456789abcdef",
    ));
    bot.tg.wait_for("answercallbackquery", 1, 20).await;
    // Another chat's request is handled meanwhile: polling does not wait for the stuck one.
    let pushed = std::time::Instant::now();
    bot.tg
        .push_update(message_update(bot.photo(40, 84, "/edit x", 800, 600)));
    let reacted = reaction_in(&bot, 84, 20).await;
    assert!(
        reacted.duration_since(pushed) < Duration::from_secs(1),
        "waited {:?}",
        reacted.duration_since(pushed)
    );
    bot.tg.wait_results(1, 20).await;
    // The stuck update is not confirmed before it was handled.
    assert!(
        bot.tg.pending_updates() >= 1,
        "confirmed while still being handled"
    );
    bot.tg.release("answercallbackquery");
    bot.stop().await;
    assert_eq!(bot.tg.pending_updates(), 0, "all confirmed once handled");
    assert_eq!(bot.ds.calls(), 1);
}

/// sendMessage calls to `chat_id` whose text contains `needle`.
fn said_in(bot: &Bot, chat_id: i64, needle: &str) -> usize {
    bot.tg
        .calls_to("sendmessage")
        .iter()
        .filter(|c| c.chat_id() == Some(chat_id))
        .filter(|c| {
            c.params["text"]
                .as_str()
                .is_some_and(|t| t.contains(needle))
        })
        .count()
}

#[tokio::test]
async fn outside_the_allowed_chats_nothing_is_spent_and_a_request_is_answered_once() {
    let mut bot =
        Bot::start("telegram:allowed_chats = [-700]\ntelegram:private_chats = false\n").await;
    bot.tg.push_update(message_update(group_photo(
        &bot,
        1,
        -800,
        10,
        "/edit make it night",
    )));
    bot.text_containing("This bot is not enabled here.").await;
    // A second request there within the hour, a plain message, /help: no answer.
    bot.tg.push_update(message_update(group_photo(
        &bot,
        2,
        -800,
        11,
        "/edit again",
    )));
    let plain = text_message(3, group_chat(-800), user(11, "en"), "nice photo", None);
    bot.tg.push_update(message_update(plain));
    let help = text_message(4, group_chat(-800), user(11, "en"), "/help", None);
    bot.tg.push_update(message_update(help));
    // Private chats are off: a request there is refused, a plain text is not answered.
    bot.tg
        .push_update(message_update(bot.photo(5, 12, "/edit x", 800, 600)));
    bot.text_containing("does not take requests in private chats")
        .await;
    let hello = text_message(6, private_chat(13), user(13, "en"), "hello", None);
    bot.tg.push_update(message_update(hello));
    // The operator is served anywhere, and so is everyone in the listed group.
    bot.tg.push_update(message_update(group_photo(
        &bot, 7, -800, ADMIN, "/edit op",
    )));
    bot.tg
        .push_update(message_update(group_photo(&bot, 8, -700, 14, "/edit ok")));
    let results = bot.tg.wait_results(2, 30).await;
    bot.stop().await;
    let mut to: Vec<i64> = results.iter().filter_map(|c| c.chat_id()).collect();
    to.sort_unstable();
    assert_eq!(to, vec![-800, -700]);
    assert_eq!(said_in(&bot, -800, "not enabled"), 1, "{:?}", bot.texts());
    assert_eq!(
        bot.tg
            .calls_to("sendmessage")
            .iter()
            .filter(|c| c.chat_id() == Some(-800))
            .count(),
        1
    );
    assert_eq!(
        bot.tg
            .calls_to("sendmessage")
            .iter()
            .filter(|c| c.chat_id() == Some(13))
            .count(),
        0
    );
    assert_eq!(bot.ds.calls(), 2);
    for u in [10, 11, 12, 13] {
        assert_eq!(bot.used(u).await, 0, "user {u} spent nothing");
    }
    assert_eq!((bot.used(ADMIN).await, bot.used(14).await), (1, 1));
    // No job was taken: no 👀 on any refused message.
    let reacted: Vec<i64> = bot
        .tg
        .calls_to("setmessagereaction")
        .iter()
        .filter_map(|c| c.int("message_id"))
        .collect();
    assert!(reacted.iter().all(|m| [7, 8].contains(m)), "{reacted:?}");
}

#[tokio::test]
async fn with_leave_unlisted_the_bot_says_why_once_and_leaves_a_group_it_was_added_to() {
    let mut bot =
        Bot::start("telegram:allowed_chats = [-700]\ntelegram:leave_unlisted = true\n").await;
    let added = tg::members_joined(1, group_chat(-801), user(60, "en"), vec![tg::bot_user()]);
    bot.tg.push_update(message_update(added));
    bot.tg.wait_for("leavechat", 1, 20).await;
    // Added to a listed group: it stays.
    let listed = tg::members_joined(2, group_chat(-700), user(60, "en"), vec![tg::bot_user()]);
    bot.tg.push_update(message_update(listed));
    bot.tg
        .push_update(message_update(group_photo(&bot, 3, -700, 61, "/edit ok")));
    bot.tg.wait_results(1, 30).await;
    bot.stop().await;
    let calls = bot.tg.calls();
    let said = calls
        .iter()
        .position(|c| c.method == "sendmessage" && c.chat_id() == Some(-801))
        .expect("it said why");
    let left = calls.iter().position(|c| c.method == "leavechat").unwrap();
    assert!(said < left, "said why before leaving");
    assert_eq!(said_in(&bot, -801, "This bot is not enabled here."), 1);
    let leaves: Vec<Option<i64>> = bot
        .tg
        .calls_to("leavechat")
        .iter()
        .map(|c| c.chat_id())
        .collect();
    assert_eq!(leaves, vec![Some(-801)]);
}

#[tokio::test]
async fn allow_add_from_the_cli_is_in_force_in_the_running_daemon_within_a_second() {
    let mut bot = Bot::start("telegram:allowed_chats = [-700]\n").await;
    bot.tg
        .push_update(message_update(group_photo(&bot, 1, -802, 20, "/edit one")));
    bot.text_containing("This bot is not enabled here.").await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_qwen-edit-bot"))
        .args(["allow", "add", "telegram:-802", "--config"])
        .arg(bot.dir.join("config.toml"))
        .env_clear()
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("telegram:-802 is allowed now"), "{stdout}");
    assert!(
        stdout.contains("telegram groups: only -802, -700")
            || stdout.contains("telegram groups: only -700, -802"),
        "{stdout}"
    );
    let added = std::time::Instant::now();
    // The claim under test is "within 1 s" of the CLI's write.
    tokio::time::sleep(Duration::from_secs(1)).await;
    bot.tg
        .push_update(message_update(group_photo(&bot, 2, -802, 20, "/edit two")));
    let reacted = reaction_in(&bot, -802, 10).await;
    assert!(reacted.duration_since(added) < Duration::from_millis(1500));
    bot.tg.wait_results(1, 30).await;
    bot.stop().await;
    assert_eq!((bot.ds.calls(), bot.used(20).await), (1, 1));
}

#[tokio::test]
async fn the_output_size_reaches_the_backend_with_an_asterisk_and_bad_sizes_are_refused() {
    let mut bot = Bot::start("").await;
    bot.tg.push_update(message_update(bot.photo(
        1,
        30,
        "/edit wide --size 1024x1536",
        800,
        600,
    )));
    bot.tg.wait_results(1, 30).await;
    bot.tg.push_update(message_update(bot.photo(
        2,
        31,
        "/edit huge --size 4000x4000",
        800,
        600,
    )));
    bot.text_containing("Each side of --size must be from 512 to 2048 pixels")
        .await;
    bot.tg.push_update(message_update(bot.photo(
        3,
        32,
        "/edit odd --size big",
        800,
        600,
    )));
    bot.text_containing("--size must be WIDTHxHEIGHT").await;
    bot.stop().await;
    let seen = bot.ds.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body["parameters"]["size"], "1024*1536");
    assert_eq!((bot.used(31).await, bot.used(32).await), (0, 0));
}

#[tokio::test]
async fn the_base_model_takes_no_size_and_default_size_is_sent_when_none_is_given() {
    let mut bot = Bot::start("backend:model = \"qwen-image-edit\"\n").await;
    bot.tg.push_update(message_update(bot.photo(
        1,
        33,
        "/edit x --size 1024x1024",
        800,
        600,
    )));
    bot.text_containing("makes images at the input's size only")
        .await;
    bot.stop().await;
    assert_eq!((bot.ds.calls(), bot.used(33).await), (0, 0));

    let mut bot = Bot::start("backend:default_size = \"768*1024\"\n").await;
    bot.tg
        .push_update(message_update(bot.photo(1, 34, "/edit x", 800, 600)));
    bot.tg.push_update(message_update(bot.photo(
        2,
        35,
        "/edit y --size 2048x512",
        800,
        600,
    )));
    bot.tg.wait_results(2, 30).await;
    bot.stop().await;
    let mut sizes: Vec<String> = bot
        .ds
        .seen()
        .iter()
        .map(|s| {
            s.body["parameters"]["size"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    sizes.sort();
    assert_eq!(sizes, vec!["2048*512", "768*1024"]);
}

#[tokio::test]
async fn max_input_side_decides_how_large_inputs_reach_the_backend() {
    let mut bot = Bot::start("backend:max_input_side = 1024\n").await;
    bot.tg
        .push_update(message_update(bot.photo(1, 40, "/edit x", 4000, 3000)));
    bot.tg.wait_results(1, 30).await;
    bot.stop().await;
    // A quarter of 4000×3000 straight from the JPEG's DCT: within 10 % of 1024, so kept.
    assert_eq!(
        bot.ds.seen()[0].images,
        vec![("image/jpeg".into(), 1000, 750)]
    );
}

/// The earliest the `n`-th of `calls` messages can go after the first under the windows
/// `(max, per)` (each call as soon as every window has room).
fn earliest_last(calls: usize, windows: &[(usize, Duration)]) -> Duration {
    let mut at: Vec<Duration> = Vec::with_capacity(calls);
    for k in 0..calls {
        let mut t = at.last().copied().unwrap_or_default();
        for &(max, per) in windows {
            if k >= max {
                t = t.max(at[k - max] + per);
            }
        }
        at.push(t);
    }
    at.last().copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_users_in_one_group_get_every_result_within_telegrams_limits_and_no_429() {
    // Telegram's limits, twenty times faster: 3 messages in any 0.15 s in a chat, 20 in any
    // 3 s in a group, 30 a second overall. The fake answers 429 beyond them; the bot's outbox
    // keeps the same limits.
    let chat = (3, Duration::from_millis(150));
    let group = (20, Duration::from_secs(3));
    let overall = (30, Duration::from_secs(1));
    let mut bot = Bot::start(
        "per_user = 5\n\
         telegram:limit_per_chat = \"3/0.15s\"\n\
         telegram:limit_per_group = \"20/3s\"\n\
         telegram:limit_overall = \"30/1s\"\n",
    )
    .await;
    bot.tg.limit(tg::Limits {
        chat,
        group,
        overall,
    });
    let started = std::time::Instant::now();
    for u in 0..30 {
        let m = group_photo(&bot, 500 + u, -900, 9000 + i64::from(u), "/edit x");
        bot.tg.push_update(message_update(m));
    }
    let results = bot.tg.wait_results(30, 60).await;
    let elapsed = started.elapsed();
    let mut targets: Vec<i64> = results.iter().map(|r| reply_target(&r.params)).collect();
    targets.sort();
    assert_eq!(
        targets,
        (500..530).collect::<Vec<_>>(),
        "each request its result"
    );
    bot.stop().await;
    assert_eq!(bot.tg.throttled(), 0, "no 429 from Telegram");
    let counted = |m: &str| bot.tg.calls_to(m).len();
    let placeholders = counted("sendphoto");
    let statuses = counted("editmessagecaption") + counted("editmessagetext");
    assert_eq!(placeholders, 30, "one placeholder each");
    // Every status edit waited behind the results and placeholders of the group, and was
    // dropped for its result.
    assert_eq!(statuses, 0, "status edits never took the results' turn");
    let messages = placeholders + counted("editmessagemedia") + statuses;
    let bound = earliest_last(messages, &[chat, group, overall]);
    println!(
        "30 users in one group: {messages} messages ({} calls in all) in {elapsed:?}; the \
         limits allow them in {bound:?} at best",
        bot.tg.calls().len()
    );
    assert!(
        elapsed <= bound.mul_f64(1.1) + Duration::from_millis(500),
        "{elapsed:?} for what the limits allow in {bound:?}"
    );
    for u in 0..30 {
        assert_eq!(bot.used(9000 + u).await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_images_are_downloaded_in_its_chats_turn_so_one_delivery_at_a_time_holds_them() {
    // A slow chat: 2 messages in any 0.4 s. Six results finish about together; each is
    // downloaded only when its turn to be sent has come, so the outbox never holds the bytes of
    // a result waiting behind another.
    let chat = (2, Duration::from_millis(400));
    let mut bot = Bot::start(
        "per_user = 5\n\
         telegram:limit_per_chat = \"2/0.4s\"\n",
    )
    .await;
    bot.tg.limit(tg::Limits {
        chat,
        group: (20, Duration::from_secs(60)),
        overall: (30, Duration::from_secs(1)),
    });
    for u in 0..6 {
        let m = group_photo(&bot, 600 + u, -901, 9100 + i64::from(u), "/edit x");
        bot.tg.push_update(message_update(m));
    }
    let results = bot.tg.wait_results(6, 60).await;
    bot.stop().await;
    assert_eq!(results.len(), 6);
    assert_eq!(bot.tg.throttled(), 0, "no 429 from Telegram");
    let shown: Vec<std::time::Instant> = bot
        .tg
        .calls_to("editmessagemedia")
        .iter()
        .map(|c| c.at)
        .collect();
    let downloaded = bot.ds.fetched_at();
    assert_eq!((shown.len(), downloaded.len()), (6, 6));
    for (k, at) in downloaded.iter().enumerate() {
        let before = shown.iter().filter(|s| *s < at).count();
        assert_eq!(
            before, k,
            "download {k} came after {before} results were shown: a result waited with its bytes"
        );
    }
    for u in 0..6 {
        assert_eq!(bot.used(9100 + u).await, 1);
    }
}

#[tokio::test]
async fn a_result_whose_answer_is_lost_is_put_again_and_shows_once() {
    let mut bot = Bot::start("").await;
    // Telegram takes the edit, and the connection breaks before its answer arrives.
    bot.tg.fail_next("editmessagemedia", Fault::LoseResponse, 1);
    bot.tg
        .push_update(message_update(bot.photo(330, 42, "/edit x", 800, 600)));
    let edits = bot.tg.wait_for("editmessagemedia", 2, 30).await;
    assert_eq!(
        edits[0].int("message_id"),
        edits[1].int("message_id"),
        "the same placeholder edited again"
    );
    bot.stop().await;
    let shown = bot.tg.shown();
    assert_eq!(shown.len(), 1, "one message in the chat: {shown:?}");
    assert!(
        shown[0].result && shown[0].reply_to == Some(330),
        "{shown:?}"
    );
    assert_eq!((bot.ds.calls(), bot.used(42).await), (1, 1));
}

#[tokio::test]
async fn a_placeholder_deleted_while_the_job_runs_is_replaced_and_the_result_shows_once() {
    let mut bot = Bot::start("").await;
    bot.ds.hold();
    bot.tg
        .push_update(message_update(bot.photo(340, 42, "/edit x", 800, 600)));
    bot.tg.wait_for("sendphoto", 1, 20).await;
    let first = bot.tg.sent_messages(42)[0]["message_id"].as_i64().unwrap();
    bot.tg.delete_message(42, first);
    bot.ds.release();
    let result = bot.tg.wait_results(1, 20).await.remove(0);
    bot.stop().await;
    let held = bot.tg.calls_to("sendphoto");
    assert_eq!(held.len(), 2, "a new placeholder for the one that is gone");
    assert_ne!(result.int("message_id"), Some(first));
    let shown = bot.tg.shown();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(shown[0].result && shown[0].reply_to == Some(340));
    assert_eq!((bot.ds.calls(), bot.used(42).await), (1, 1));
    // The result's bytes were not kept while the new placeholder was posted: fetched again.
    assert_eq!(bot.ds.fetched().len(), 2, "{:?}", bot.ds.fetched());
}

#[tokio::test]
async fn a_waiting_jobs_new_place_is_edited_onto_its_placeholder_before_its_result() {
    // Three run at once for 3.5 s; of the seven, the last waits through two of them, and its
    // place changes when the first three end (the ticker looks every 3 s).
    let mut bot = Bot::start("").await;
    bot.ds.set_latency(Duration::from_millis(3500));
    for u in 0..7 {
        let m = bot.photo(600 + u, 7100 + i64::from(u), "/edit x", 800, 600);
        bot.tg.push_update(message_update(m));
    }
    let results = bot.tg.wait_results(7, 40).await;
    bot.stop().await;
    let held = bot.tg.calls_to("sendphoto");
    let moved: Vec<tg::Call> = bot
        .tg
        .shown_texts()
        .into_iter()
        .filter(|c| c.method == "editmessagecaption")
        .filter(|c| c.str("text").is_some_and(|t| t.contains("In the queue")))
        .collect();
    assert!(!moved.is_empty(), "no new place was shown");
    for edit in &moved {
        let request = reply_target(&edit.params);
        let posted = held
            .iter()
            .find(|h| reply_target(&h.params) == request)
            .expect("its placeholder");
        assert_ne!(
            posted.str("caption"),
            edit.str("text"),
            "the place changed from the one first shown"
        );
        let result = results
            .iter()
            .find(|r| reply_target(&r.params) == request)
            .expect("its result");
        assert_eq!(
            result.int("message_id"),
            edit.int("message_id"),
            "the same message"
        );
        assert!(result.at > edit.at, "the place was shown before the result");
    }
}
