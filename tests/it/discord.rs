//! The Discord front-end end to end: the real `serve` path with serenity against the fake REST
//! API and gateway, and the real DashScope client against the fake DashScope.

use std::time::Duration;

use qwen_edit_bot::config::Settings;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::fakes::dashscope::{API_KEY, FakeDashScope, Reply};
use crate::fakes::discord::{
    self as dc, FakeDiscord, TOKEN, button_press, context_menu, member, message, modal_submit,
    option, slash_command, slash_edit, subcommand, user,
};
use crate::fakes::images;

const GUILD: u64 = 77;
const CHANNEL: u64 = 500;
/// Permission bits as Discord sends them: none, and Manage Server.
const NO_PERMS: &str = "0";
const MANAGE_GUILD: &str = "32";

struct Bot {
    dc: FakeDiscord,
    ds: FakeDashScope,
    dir: std::path::PathBuf,
    _tmp: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Bot {
    async fn start(quota_extra: &str) -> Self {
        let (dc, ds) = (FakeDiscord::start().await, FakeDashScope::start().await);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut bot = Bot {
            dc,
            ds,
            dir,
            _tmp: tmp,
            stop: None,
            task: None,
        };
        bot.launch(quota_extra).await;
        bot
    }

    /// `quota_extra` lines go to `[quota]`, except lines starting with `discord:`.
    async fn launch(&mut self, quota_extra: &str) {
        let discord_extra: String = quota_extra
            .lines()
            .filter_map(|l| l.strip_prefix("discord:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let quota_extra: String = quota_extra
            .lines()
            .filter(|l| !l.starts_with("discord:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let path = self.dir.join("config.toml");
        let registered = self.dc.calls_to("PUT", "/guilds/*/commands").len();
        let config = format!(
            "[backend]\nbase_url = {:?}\nmax_requests_per_second = 1000.0\nmax_concurrent = 3\n\
             [telegram]\nenabled = false\n\
             [discord]\nenabled = true\napi_url = {:?}\nguild_ids = [{GUILD}]\n{discord_extra}\
             [quota]\ndatabase = {:?}\nmax_in_flight_per_user = 3\n{}{quota_extra}\n[http]\nlisten = \"\"\n",
            self.ds.base_url,
            self.dc.rest_url,
            self.dir.join("q.sqlite3").to_str().unwrap(),
            if quota_extra.contains("per_user") {
                ""
            } else {
                "per_user = 5\n"
            },
        );
        std::fs::write(&path, config).unwrap();
        let settings = Settings::load_with_env(&path, |k| match k {
            "DASHSCOPE_API_KEY" => Some(API_KEY.into()),
            "DISCORD_TOKEN" => Some(TOKEN.into()),
            _ => None,
        })
        .unwrap();
        let (stop, stopped) = oneshot::channel();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(qwen_edit_bot::app::serve(settings, async {
            let _ = stopped.await;
        })));
        self.dc.wait_ready(20).await;
        // Commands are registered right after READY; wait for them so events come after.
        self.dc
            .wait_for("PUT", "/guilds/*/commands", registered + 1, 20)
            .await;
    }

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
        let problems = self.dc.problems();
        assert!(problems.is_empty(), "the fake Discord saw: {problems:?}");
    }

    async fn used(&self, user_id: u64) -> u32 {
        use qwen_edit_bot::core::model::{Platform, UserRef};
        use qwen_edit_bot::core::ports::store::Store;
        let ledger =
            qwen_edit_bot::store::sqlite::SqliteStore::open(&self.dir.join("q.sqlite3")).unwrap();
        let since = chrono::Utc::now() - chrono::Duration::days(40);
        ledger
            .used(&UserRef::new(Platform::Discord, user_id.to_string()), since)
            .await
            .unwrap()
    }

    /// `/edit x` posted in `channel` by `by` with a 500×500 image (attachment `image`).
    fn edit_x(&self, id: u64, channel: u64, by: Value, image: u64) -> Value {
        let image = self.image(image, 500, 500);
        message(id, channel, Some(GUILD), by, "/edit x", vec![image], None)
    }

    /// An image attachment served by the fake.
    fn image(&self, id: u64, w: u32, h: u32) -> Value {
        self.dc.jpeg_attachment(id, w, h)
    }

    /// The channel messages the bot posted (POST /channels/{ch}/messages).
    async fn posts(&self, count: usize) -> Vec<dc::Call> {
        self.dc
            .wait_for("POST", &format!("/channels/{CHANNEL}/messages"), count, 30)
            .await
    }

    /// Every message the bot posted or changed with a text, in order: channel posts, edits of
    /// its messages (placeholders) and edits of interaction answers. An edit carries the
    /// `message_reference` of the message it changed, as the channel shows it.
    fn shown(&self) -> Vec<dc::Call> {
        self.dc
            .calls()
            .into_iter()
            .filter(|c| c.status < 300 && c.json["content"].is_string())
            .filter(|c| {
                let s = c.segments();
                matches!(
                    (c.method.as_str(), s.as_slice()),
                    ("POST", ["channels", _, "messages"])
                        | ("PATCH", ["channels", _, "messages", _])
                        | ("PATCH", ["webhooks", _, _, "messages", _])
                )
            })
            .map(|mut c| {
                if c.method == "PATCH" {
                    let edited = self.edited_message(&c);
                    c.json["message_reference"] = edited["message_reference"].clone();
                }
                c
            })
            .collect()
    }

    /// The stored message a PATCH changed (an interaction's `@original` by its token).
    fn edited_message(&self, c: &dc::Call) -> Value {
        let s = c.segments();
        let id = match s.as_slice() {
            ["channels", _, "messages", id] => id.parse().ok(),
            ["webhooks", _, token, "messages", "@original"] => self.dc.original_of(token),
            ["webhooks", _, _, "messages", id] => id.parse().ok(),
            _ => None,
        };
        id.and_then(|id| self.dc.message(id)).unwrap_or(Value::Null)
    }

    async fn post_containing(&self, needle: &str) -> dc::Call {
        for _ in 0..1000 {
            let found = self.shown().into_iter().find(|c| {
                c.json["content"]
                    .as_str()
                    .is_some_and(|t| t.contains(needle))
            });
            if let Some(c) = found {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let all: Vec<String> = self
            .dc
            .calls()
            .iter()
            .map(|c| format!("{} {} {}", c.method, c.path, c.json))
            .collect();
        panic!("no post containing {needle:?}; calls: {all:#?}");
    }

    /// The first `count` results: edits that put files into a placeholder (not status or
    /// error texts), each with the `message_reference` of the placeholder.
    async fn results(&self, count: usize) -> Vec<dc::Call> {
        for _ in 0..1500 {
            let found: Vec<dc::Call> = self
                .shown()
                .into_iter()
                .filter(|c| c.file("files[0]").is_some())
                .collect();
            if found.len() >= count {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fewer than {count} results posted");
    }

    /// `/edit prompt:make it night image:…` by bob (no permissions) in the channel, with a
    /// 900×600 image `image`.
    fn slash_night(&self, id: u64, image: u64) -> Value {
        slash_edit(
            id,
            CHANNEL,
            Some(GUILD),
            user(8, "bob"),
            NO_PERMS,
            vec![
                option("prompt", 3, json!("make it night")),
                option("image", 11, json!(image.to_string())),
            ],
            vec![self.image(image, 900, 600)],
            "en-US",
        )
    }

    /// Interaction callbacks (POST /interactions/{id}/{token}/callback), in order.
    async fn callbacks(&self, count: usize) -> Vec<dc::Call> {
        self.dc
            .wait_for("POST", "/interactions/*/*/callback", count, 20)
            .await
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn replied_to(call: &dc::Call) -> Option<u64> {
    call.json["message_reference"]["message_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
}

fn uploaded(call: &dc::Call) -> Vec<u8> {
    call.file("files[0]").expect("an uploaded file").to_vec()
}

#[tokio::test]
async fn a_text_edit_replying_to_an_image_message_gets_the_result_as_a_reply() {
    let mut bot = Bot::start("").await;
    let original = message(
        6000,
        CHANNEL,
        Some(GUILD),
        user(7, "alice"),
        "look",
        vec![bot.image(5000, 800, 600)],
        None,
    );
    bot.dc.put_message(original.clone());
    let request = message(
        6001,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        "/edit make it night --seed 3",
        vec![],
        Some(original),
    );
    bot.dc.dispatch("MESSAGE_CREATE", request);
    let post = bot.results(1).await.remove(0);
    assert_eq!(replied_to(&post), Some(6001));
    assert_eq!(images::dims(&uploaded(&post)).1, 64);
    assert!(
        post.json["content"]
            .as_str()
            .unwrap()
            .contains("make it night")
    );
    assert!(post.json["components"].to_string().contains("again:"));
    let seen = bot.ds.seen();
    assert!(seen[0].violations.is_empty(), "{:?}", seen[0].violations);
    assert_eq!(seen[0].images, vec![("image/jpeg".into(), 800, 600)]);
    assert_eq!(seen[0].body["parameters"]["seed"], 3);
    // ✅ follows the result post.
    let on_request = || -> Vec<String> {
        bot.dc
            .reactions()
            .iter()
            .filter(|r| r.message_id == 6001)
            .map(|r| r.emoji.clone())
            .collect()
    };
    for _ in 0..500 {
        if on_request().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(on_request(), ["⏳", "✅"]);
    // While it ran, a placeholder replied to the request with the prompt and the state; the
    // result went into it: the bot's only message in the channel.
    let held = bot
        .dc
        .calls_to("POST", &format!("/channels/{CHANNEL}/messages"));
    assert_eq!(held.len(), 1);
    assert_eq!(replied_to(&held[0]), Some(6001));
    assert!(held[0].files.is_empty());
    let text = held[0].json["content"].as_str().unwrap();
    assert!(
        text.contains("make it night") && text.contains("Editing"),
        "{text}"
    );
    let ours: Vec<Value> = bot
        .dc
        .channel_messages(CHANNEL)
        .into_iter()
        .filter(|m| m["author"]["id"] == dc::bot_user()["id"])
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(post.segments().last().copied(), ours[0]["id"].as_str());
    assert_eq!(ours[0]["attachments"].as_array().map(Vec::len), Some(1));
    bot.stop().await;
    assert_eq!((bot.used(8).await, bot.used(7).await), (1, 0));
}

#[tokio::test]
async fn attachments_with_the_command_and_mentions_are_edits_too() {
    let mut bot = Bot::start("").await;
    let own = message(
        6100,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        "/edit add snow",
        vec![bot.image(5100, 640, 480), bot.image(5101, 500, 500)],
        None,
    );
    bot.dc.dispatch("MESSAGE_CREATE", own);
    let mention = message(
        6101,
        CHANNEL,
        Some(GUILD),
        user(9, "cy"),
        "<@1000> edit add a hat",
        vec![bot.image(5102, 700, 500)],
        None,
    );
    bot.dc.dispatch("MESSAGE_CREATE", mention);
    let plain = message(
        6102,
        CHANNEL,
        Some(GUILD),
        user(9, "cy"),
        "nice picture",
        vec![bot.image(5103, 700, 500)],
        None,
    );
    bot.dc.dispatch("MESSAGE_CREATE", plain);
    let posts = bot.results(2).await;
    let mut targets: Vec<u64> = posts.iter().filter_map(replied_to).collect();
    targets.sort();
    assert_eq!(targets, [6100, 6101]);
    let mut prompts: Vec<String> = bot
        .ds
        .seen()
        .iter()
        .map(|s| {
            s.body["input"]["messages"][0]["content"]
                .as_array()
                .unwrap()
                .last()
                .unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    prompts.sort();
    assert_eq!(prompts, ["add a hat", "add snow"]);
    assert!(
        bot.ds.seen().iter().any(|s| s.images.len() == 2),
        "two attachments, one request"
    );
    bot.stop().await;
}

#[tokio::test]
async fn the_slash_command_defers_and_its_answer_becomes_the_result() {
    let mut bot = Bot::start("").await;
    let cmd = bot.slash_night(7000, 5200);
    bot.dc.dispatch("INTERACTION_CREATE", cmd);
    let callbacks = bot.callbacks(1).await;
    assert_eq!(callbacks[0].json["type"], 5, "deferred first");
    // The deferred answer is the placeholder: it shows the prompt and state, then the result
    // is put into it (files, caption, 🔁); nothing is posted in the channel.
    let post = bot.results(1).await.remove(0);
    assert!(post.path.ends_with("/messages/@original"), "{}", post.path);
    let content = post.json["content"].as_str().unwrap();
    assert!(
        content.starts_with("<@8>") && content.contains("make it night"),
        "{content}"
    );
    assert!(post.json["components"].to_string().contains("again:"));
    assert_eq!(images::dims(&uploaded(&post)).1, 64);
    let edits = bot.dc.calls_to("PATCH", "/webhooks/*/*/messages/@original");
    assert!(
        edits[0].json["content"]
            .as_str()
            .unwrap()
            .contains("Editing"),
        "the placeholder first"
    );
    assert!(
        bot.dc
            .calls_to("POST", &format!("/channels/{CHANNEL}/messages"))
            .is_empty()
    );
    assert_eq!(
        bot.ds.seen()[0].images,
        vec![("image/jpeg".into(), 900, 600)]
    );
    bot.stop().await;
}

#[tokio::test]
async fn the_slash_command_without_an_image_takes_the_latest_one_in_the_channel() {
    let mut bot = Bot::start("").await;
    bot.dc.put_message(message(
        6200,
        CHANNEL,
        Some(GUILD),
        user(7, "alice"),
        "old",
        vec![bot.image(5300, 400, 400)],
        None,
    ));
    bot.dc.put_message(message(
        6201,
        CHANNEL,
        Some(GUILD),
        user(7, "alice"),
        "new",
        vec![bot.image(5301, 600, 450)],
        None,
    ));
    bot.dc.put_message(message(
        6202,
        CHANNEL,
        Some(GUILD),
        user(7, "alice"),
        "just text",
        vec![],
        None,
    ));
    let cmd = slash_edit(
        7100,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        NO_PERMS,
        vec![option("prompt", 3, json!("sepia"))],
        vec![],
        "en-US",
    );
    bot.dc.dispatch("INTERACTION_CREATE", cmd);
    bot.post_containing("sepia").await;
    assert_eq!(
        bot.ds.seen()[0].images,
        vec![("image/jpeg".into(), 600, 450)]
    );
    bot.stop().await;
}

#[tokio::test]
async fn a_slash_command_refused_after_the_deferral_shows_the_reason_in_its_place() {
    let mut bot = Bot::start("").await;
    // No image given and none in the channel: found out only after deferring.
    let cmd = slash_edit(
        7150,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        NO_PERMS,
        vec![option("prompt", 3, json!("sepia"))],
        vec![],
        "en-US",
    );
    bot.dc.dispatch("INTERACTION_CREATE", cmd);
    let callback = bot.callbacks(1).await.remove(0);
    assert_eq!(callback.json["type"], 5, "deferred first");
    let edit = bot
        .dc
        .wait_for("PATCH", "/webhooks/*/*/messages/@original", 1, 20)
        .await
        .remove(0);
    let text = edit.json["content"].as_str().unwrap_or_default();
    assert!(text.contains("No image"), "{text}");
    assert_eq!(edit.status, 200);
    bot.stop().await;
    // Checked once the bot has stopped, so a late DELETE would be seen.
    assert!(
        bot.dc
            .calls_to("DELETE", "/webhooks/*/*/messages/@original")
            .is_empty(),
        "the answer is not deleted again"
    );
    let shown = bot
        .dc
        .channel_messages(CHANNEL)
        .into_iter()
        .find(|m| m["interaction_metadata"].is_object() || m["webhook_id"].is_string())
        .expect("the deferred message stays in the channel");
    assert!(shown["content"].as_str().unwrap().contains("No image"));
    assert_eq!((bot.used(8).await, bot.ds.calls()), (0, 0));
}

#[tokio::test]
async fn the_message_command_asks_for_the_prompt_in_a_modal() {
    let mut bot = Bot::start("").await;
    let target = message(
        6300,
        CHANNEL,
        Some(GUILD),
        user(7, "alice"),
        "pic",
        vec![bot.image(5400, 640, 640)],
        None,
    );
    bot.dc.put_message(target.clone());
    bot.dc.dispatch(
        "INTERACTION_CREATE",
        context_menu(
            7200,
            CHANNEL,
            Some(GUILD),
            user(8, "bob"),
            NO_PERMS,
            target,
            "zh-CN",
        ),
    );
    let modal = bot.callbacks(1).await.remove(0);
    assert_eq!(modal.json["type"], 9);
    let custom_id = modal.json["data"]["custom_id"].as_str().unwrap().to_owned();
    assert!(
        modal.json["data"]["title"]
            .as_str()
            .unwrap()
            .contains("编辑"),
        "Chinese for zh-CN"
    );
    let submit = modal_submit(
        7201,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        NO_PERMS,
        &custom_id,
        &[("prompt", "变成水彩画"), ("negative", "")],
        "zh-CN",
    );
    bot.dc.dispatch("INTERACTION_CREATE", submit);
    // The result is put into the command's own (deferred) answer.
    let post = bot.results(1).await.remove(0);
    assert!(post.path.ends_with("/messages/@original"), "{}", post.path);
    let content = post.json["content"].as_str().unwrap();
    assert!(
        content.contains("水彩") && content.contains("剩余"),
        "{content}"
    );
    // The next one fails at the backend: its deferred response says so instead of thinking on.
    bot.ds.script([Reply::Error {
        status: 400,
        code: "DataInspectionFailed",
        retry_after: None,
    }]);
    let failing = modal_submit(
        7202,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        NO_PERMS,
        &custom_id,
        &[("prompt", "变成油画"), ("negative", "")],
        "zh-CN",
    );
    let token = failing["token"].as_str().unwrap().to_owned();
    bot.dc.dispatch("INTERACTION_CREATE", failing);
    // Its placeholder, then the failure in its place.
    let told = bot
        .dc
        .wait_for(
            "PATCH",
            &format!("/webhooks/*/{token}/messages/@original"),
            2,
            20,
        )
        .await
        .remove(1);
    let text = told.json["content"].as_str().unwrap_or_default();
    assert!(
        text.contains("内容安全") && text.contains("额度已退还"),
        "{text}"
    );
    bot.stop().await;
    assert_eq!(bot.used(8).await, 1, "the failed one was refunded");
}

#[tokio::test]
async fn errors_get_a_clear_answer_and_cost_nothing() {
    let mut bot = Bot::start("per_user = 1\n").await;
    let none = message(
        6400,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        "/edit make it night",
        vec![],
        None,
    );
    bot.dc.dispatch("MESSAGE_CREATE", none);
    let reply = bot.post_containing("No image").await;
    assert_eq!(replied_to(&reply), Some(6400));
    let flag = message(
        6401,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        "/edit x --strength 2",
        vec![bot.image(5500, 500, 500)],
        None,
    );
    bot.dc.dispatch("MESSAGE_CREATE", flag);
    bot.post_containing("Unknown option --strength").await;
    // A slash command with an empty prompt is answered privately at once.
    let empty = slash_edit(
        7300,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        NO_PERMS,
        vec![option("prompt", 3, json!("  "))],
        vec![],
        "en-US",
    );
    bot.dc.dispatch("INTERACTION_CREATE", empty);
    let answer = bot.callbacks(1).await.remove(0);
    assert_eq!(
        (
            answer.json["type"].as_u64(),
            answer.json["data"]["flags"].as_u64()
        ),
        (Some(4), Some(64))
    );
    // Over quota: the reset time is a Discord timestamp.
    bot.dc.dispatch(
        "MESSAGE_CREATE",
        message(
            6402,
            CHANNEL,
            Some(GUILD),
            user(8, "bob"),
            "/edit a",
            vec![bot.image(5501, 500, 500)],
            None,
        ),
    );
    bot.posts(3).await;
    bot.dc.dispatch(
        "MESSAGE_CREATE",
        message(
            6403,
            CHANNEL,
            Some(GUILD),
            user(8, "bob"),
            "/edit b",
            vec![bot.image(5502, 500, 500)],
            None,
        ),
    );
    let over = bot.post_containing("of your 1 edits").await;
    assert!(
        over.json["content"].as_str().unwrap().contains("<t:"),
        "{}",
        over.json["content"]
    );
    bot.stop().await;
    assert_eq!((bot.used(8).await, bot.ds.calls()), (1, 1));
}

#[tokio::test]
async fn a_backend_failure_is_explained_and_refunded() {
    let mut bot = Bot::start("").await;
    bot.ds.script([Reply::Error {
        status: 400,
        code: "DataInspectionFailed",
        retry_after: None,
    }]);
    bot.dc.dispatch(
        "MESSAGE_CREATE",
        bot.edit_x(6500, CHANNEL, user(8, "bob"), 5600),
    );
    let told = bot.post_containing("content policy").await;
    assert!(told.json["content"].as_str().unwrap().contains("refunded"));
    assert_eq!(replied_to(&told), Some(6500));
    bot.stop().await;
    assert_eq!(bot.used(8).await, 0);
    use qwen_edit_bot::core::ports::store::Store;
    let ledger =
        qwen_edit_bot::store::sqlite::SqliteStore::open(&bot.dir.join("q.sqlite3")).unwrap();
    assert!(
        ledger.unfinished().await.unwrap().is_empty(),
        "the user was told: nothing to tell after a restart"
    );
}

#[tokio::test]
async fn a_rate_limited_or_failing_result_post_is_retried_without_a_new_model_call() {
    let mut bot = Bot::start("").await;
    let edits = format!("/channels/{CHANNEL}/messages/*");
    bot.dc.fail_next_rate_limited("PATCH", &edits, 0.2, 1);
    bot.dc.fail_next("PATCH", &edits, 502, 0, 1);
    bot.dc.dispatch(
        "MESSAGE_CREATE",
        bot.edit_x(6550, CHANNEL, user(8, "bob"), 5650),
    );
    let sent = bot.dc.wait_for("PATCH", &edits, 3, 30).await;
    assert_eq!(
        sent.iter().map(|c| c.status).collect::<Vec<_>>(),
        [429, 502, 200]
    );
    assert!(
        sent.iter().all(|c| c.file("files[0]").is_some()),
        "the result each time"
    );
    let shown = bot.results(1).await;
    assert_eq!(shown.len(), 1, "one result shown");
    assert_eq!(replied_to(&shown[0]), Some(6550));
    assert_eq!(bot.ds.calls(), 1);
    bot.stop().await;
    assert_eq!(bot.used(8).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_its_channel_for_one_window_of_its_limit_and_no_other_channel() {
    // The bot's channel limit: 5 messages in any 2 s. Discord answers a result in CHANNEL 429.
    let mut bot = Bot::start("discord:limit_per_channel = \"5/2s\"\n").await;
    const OTHER: u64 = 501;
    bot.dc.set_channel(OTHER, Some(GUILD));
    let (edits, other_edits) = (
        format!("/channels/{CHANNEL}/messages/*"),
        format!("/channels/{OTHER}/messages/*"),
    );
    bot.dc.fail_next_rate_limited("PATCH", &edits, 0.2, 1);
    bot.dc.dispatch(
        "MESSAGE_CREATE",
        bot.edit_x(6560, CHANNEL, user(8, "u"), 5660),
    );
    let throttled = bot.dc.wait_for("PATCH", &edits, 1, 30).await[0].clone();
    assert_eq!(throttled.status, 429);
    // Another request in CHANNEL: its placeholder waits for the pause too.
    bot.dc.dispatch(
        "MESSAGE_CREATE",
        bot.edit_x(6562, CHANNEL, user(10, "u"), 5662),
    );
    // While CHANNEL waits, a request in OTHER is answered in full.
    bot.dc.dispatch(
        "MESSAGE_CREATE",
        bot.edit_x(6561, OTHER, user(9, "u"), 5661),
    );
    let other = bot.dc.wait_for("PATCH", &other_edits, 1, 30).await[0].clone();
    let again = bot.dc.wait_for("PATCH", &throttled.path, 2, 30).await[1].clone();
    // Both results in CHANNEL, after the retried one the later request's.
    bot.dc.wait_for("PATCH", &edits, 3, 30).await;
    bot.stop().await;
    assert_eq!((other.status, again.status), (200, 200));
    assert!(
        again.at >= throttled.at + Duration::from_secs(2),
        "CHANNEL tried again {:?} after its 429, within the window",
        again.at - throttled.at
    );
    assert!(
        other.at < again.at,
        "OTHER's result waited for CHANNEL's pause"
    );
    assert_eq!(
        bot.dc.calls_to("PATCH", &throttled.path).len(),
        2,
        "the result once more"
    );
    let posts = bot
        .dc
        .calls_to("POST", &format!("/channels/{CHANNEL}/messages"));
    let waited = posts.iter().find(|c| replied_to(c) == Some(6562)).unwrap();
    assert!(
        waited.at >= throttled.at + Duration::from_secs(2),
        "a placeholder went to CHANNEL {:?} into its pause",
        waited.at - throttled.at
    );
    assert_eq!(
        (bot.used(8).await, bot.used(9).await, bot.used(10).await),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn a_result_over_the_upload_limit_is_compressed_to_fit() {
    let mut bot = Bot::start("").await;
    let big = images::noise_png(2600, 2600);
    assert!(big.len() > 10 * 1024 * 1024, "{}", big.len());
    bot.ds.set_result_bytes(big);
    bot.dc.dispatch(
        "MESSAGE_CREATE",
        bot.edit_x(6600, CHANNEL, user(8, "bob"), 5700),
    );
    let post = bot.post_containing("compressed").await;
    let file = uploaded(&post);
    assert!(file.len() <= 10 * 1024 * 1024, "{}", file.len());
    assert_eq!(images::dims(&file), (image::ImageFormat::Jpeg, 2600, 2600));
    bot.stop().await;
}

#[tokio::test]
async fn again_works_after_a_restart() {
    let mut bot = Bot::start("").await;
    let request = message(
        6700,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        "/edit make it night --seed 1",
        vec![bot.image(5800, 640, 480)],
        None,
    );
    bot.dc.dispatch("MESSAGE_CREATE", request);
    let first = bot.results(1).await.remove(0);
    let custom_id = first.json["components"][0]["components"][0]["custom_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let result_msg = bot
        .dc
        .calls_to("POST", &format!("/channels/{CHANNEL}/messages"))
        .len();
    assert_eq!(result_msg, 1);
    bot.stop().await;
    bot.launch("").await;
    // Pressed on the result message itself (the only place the button counts).
    let posted = bot
        .dc
        .channel_messages(CHANNEL)
        .into_iter()
        .find(|m| m["components"][0]["components"][0]["custom_id"] == custom_id.as_str())
        .expect("the result message carries the button");
    let press = button_press(
        7400,
        CHANNEL,
        Some(GUILD),
        user(9, "cy"),
        NO_PERMS,
        &custom_id,
        posted,
        "en-US",
    );
    let token = press["token"].as_str().unwrap().to_owned();
    bot.dc.dispatch("INTERACTION_CREATE", press);
    // The new result goes into the press's own (deferred) answer, in the same channel.
    let again = bot.results(2).await.remove(1);
    assert_eq!(
        again.segments()[2..],
        [token.as_str(), "messages", "@original"]
    );
    let answer = bot
        .dc
        .original_of(&token)
        .and_then(|id| bot.dc.message(id))
        .unwrap();
    assert_eq!(answer["channel_id"], CHANNEL.to_string());
    let seen = bot.ds.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].images, seen[1].images,
        "the input fetched again from its message"
    );
    assert!(
        seen[1].body["parameters"]["seed"]
            .as_u64()
            .is_some_and(|s| s != 1),
        "a new seed: {}",
        seen[1].body["parameters"]
    );
    bot.stop().await;
    assert_eq!((bot.used(8).await, bot.used(9).await), (1, 1));
}

#[tokio::test]
async fn quota_admin_needs_manage_server_every_time() {
    let mut bot = Bot::start("").await;
    let block = |id: u64, perms: &str| {
        let args = vec![option("user", 6, json!("7"))];
        let mut v = slash_command(
            id,
            "quota-admin",
            CHANNEL,
            Some(GUILD),
            user(8, "bob"),
            perms,
            vec![subcommand("block", args)],
            "en-US",
        );
        v["data"]["resolved"] = json!({ "users": { "7": user(7, "alice") }, "members": { "7": member(user(7, "alice"), "0") } });
        v
    };
    bot.dc.dispatch("INTERACTION_CREATE", block(7500, NO_PERMS));
    let refused = bot.callbacks(1).await.remove(0);
    assert!(
        refused.json["data"]["content"]
            .as_str()
            .unwrap()
            .contains("Manage Server")
    );
    assert_eq!(refused.json["data"]["flags"], 64);
    bot.dc
        .dispatch("INTERACTION_CREATE", block(7501, MANAGE_GUILD));
    let applied = bot.callbacks(2).await.remove(1);
    assert!(
        applied.json["data"]["content"]
            .as_str()
            .unwrap()
            .contains("User 7 is blocked")
    );
    bot.dc.dispatch(
        "MESSAGE_CREATE",
        bot.edit_x(6800, CHANNEL, user(7, "alice"), 5900),
    );
    bot.post_containing("not allowed").await;
    bot.dc.dispatch(
        "INTERACTION_CREATE",
        slash_command(
            7502,
            "quota",
            CHANNEL,
            Some(GUILD),
            user(8, "bob"),
            NO_PERMS,
            vec![],
            "en-US",
        ),
    );
    let quota = bot.callbacks(3).await.remove(2);
    assert!(
        quota.json["data"]["content"]
            .as_str()
            .unwrap()
            .contains("5 of 5 edits left")
    );
    bot.stop().await;
    use qwen_edit_bot::core::model::{Platform, UserRef};
    use qwen_edit_bot::core::ports::store::Store;
    let ledger =
        qwen_edit_bot::store::sqlite::SqliteStore::open(&bot.dir.join("q.sqlite3")).unwrap();
    assert!(
        ledger
            .settings(&UserRef::new(Platform::Discord, "7"), Some("77"))
            .await
            .unwrap()
            .blocked
    );
}

#[tokio::test]
async fn a_result_posted_just_before_a_crash_is_not_posted_again_when_the_job_resumes() {
    let mut bot = Bot::start("").await;
    let request = message(
        6100,
        CHANNEL,
        Some(GUILD),
        user(7, "alice"),
        "/edit make it night",
        vec![bot.image(6101, 640, 480)],
        None,
    );
    bot.dc.dispatch("MESSAGE_CREATE", request);
    let first = bot.results(1).await.remove(0);
    bot.stop().await;
    // As if the process had died after Discord took the post but before the commit: the job is
    // back to "result ready", so the next start delivers it again.
    let db = bot.dir.join("q.sqlite3");
    let reopened = rusqlite::Connection::open(&db).unwrap();
    let changed = reopened
        .execute(
            "UPDATE jobs SET status = 'ready', finished_at = NULL WHERE status = 'delivered'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(reopened);
    bot.launch("").await;
    let status = || -> String {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT status FROM jobs", [], |r| r.get(0))
            .unwrap()
    };
    for _ in 0..500 {
        if status() == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status(), "delivered");
    // The result is put into the kept placeholder again: the same edit, nothing new posted.
    let posts = bot
        .dc
        .calls_to("POST", &format!("/channels/{CHANNEL}/messages"));
    assert_eq!(posts.len(), 1, "no second message after the restart");
    let again = bot.results(2).await.remove(1);
    assert_eq!(again.path, first.path, "the same placeholder edited again");
    assert_eq!(again.json["content"], first.json["content"]);
    assert!(
        posts[0].json["nonce"]
            .as_str()
            .is_some_and(|n| n.len() <= 25)
    );
    assert_eq!(posts[0].json["enforce_nonce"], true);
    let results: Vec<Value> = bot
        .dc
        .channel_messages(CHANNEL)
        .into_iter()
        .filter(|m| m["author"]["bot"] == true && m["attachments"][0].is_object())
        .collect();
    assert_eq!(results.len(), 1, "Discord kept one result: {results:#?}");
    assert_eq!(bot.ds.calls(), 1, "the model was not called again");
    bot.stop().await;
    assert_eq!(bot.used(7).await, 1, "charged once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_30_users_is_served_with_at_most_3_backend_calls_at_once() {
    let mut bot = Bot::start("").await;
    // The backend answers nobody until all 30 are in, so the queue is sure to fill.
    bot.ds.hold();
    for u in 0..30u64 {
        let m = bot.edit_x(7000 + u, CHANNEL, user(100 + u, "u"), 8000 + u);
        bot.dc.dispatch("MESSAGE_CREATE", m);
    }
    let posts = || {
        bot.dc
            .calls_to("POST", &format!("/channels/{CHANNEL}/messages"))
    };
    // Every job gets its placeholder: three run, and the 27 waiting are each told their place
    // and expected start on theirs.
    for _ in 0..3000 {
        if bot.ds.in_flight() == 3 && posts().len() >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bot.ds.in_flight(), 3);
    let statuses = posts();
    assert_eq!(statuses.len(), 30, "one placeholder each");
    assert!(statuses.iter().all(|p| p.file("files[0]").is_none()));
    let waiting = statuses
        .iter()
        .filter(|p| {
            p.json["content"]
                .as_str()
                .is_some_and(|t| t.contains("<t:"))
        })
        .count();
    // Up to three more may have been posted before a worker took them.
    assert!(
        (27..=30).contains(&waiting),
        "every waiting job was told its expected start: {statuses:?}"
    );
    bot.ds.release();
    // Count the results put into the placeholders.
    let results = || {
        bot.dc
            .calls_to("PATCH", &format!("/channels/{CHANNEL}/messages/*"))
            .iter()
            .filter(|p| p.status == 200 && p.file("files[0]").is_some())
            .count()
    };
    for _ in 0..3000 {
        if results() >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(results(), 30);
    assert_eq!(posts().len(), 30, "nothing posted besides the placeholders");
    assert_eq!(bot.ds.calls(), 30);
    assert_eq!(
        bot.ds.max_in_flight(),
        3,
        "the backend limit was reached, never passed"
    );
    bot.stop().await;
}

#[tokio::test]
async fn discord_gateway_url_overrides_the_gateway_the_rest_api_names() {
    let mut bot = Bot::start("").await;
    bot.stop().await;
    // The REST API now names a gateway where nothing listens; the configured one is used.
    bot.dc.advertise_gateway("ws://127.0.0.1:9");
    let gateway = bot.dc.gateway_url.clone();
    bot.launch(&format!("discord:gateway_url = {gateway:?}\n"))
        .await;
    assert_eq!(
        bot.dc.identifies().len(),
        2,
        "connected again, to the configured gateway"
    );
    bot.stop().await;
}

#[tokio::test]
async fn the_gateway_session_asks_for_message_content_and_can_pin_a_shard_range() {
    let mut bot = Bot::start("discord:shards = [1, 1, 2]\n").await;
    let identify = bot.dc.identifies().remove(0);
    assert_eq!(
        identify["shard"],
        json!([1, 2]),
        "only shard 1 of 2 runs here"
    );
    let intents = identify["intents"].as_u64().unwrap();
    for (bit, name) in [
        (1 << 0, "GUILDS"),
        (1 << 9, "GUILD_MESSAGES"),
        (1 << 12, "DIRECT_MESSAGES"),
        (1 << 15, "MESSAGE_CONTENT"),
    ] {
        assert!(intents & bit != 0, "{name} intent");
    }
    let commands = bot.dc.commands();
    let names: Vec<&str> = commands.iter().filter_map(|c| c["name"].as_str()).collect();
    for name in ["edit", "quota", "quota-admin", "help", "Edit image"] {
        assert!(names.contains(&name), "{name} registered: {names:?}");
    }
    let admin = commands
        .iter()
        .find(|c| c["name"] == "quota-admin")
        .unwrap();
    assert_eq!(
        admin["default_member_permissions"], "32",
        "Manage Server by default"
    );
    bot.stop().await;
}

/// `/quota-admin <sub> user:<target> [limit]` by `who` with `perms`.
fn quota_admin(
    id: u64,
    who: u64,
    perms: &str,
    sub: &str,
    target: u64,
    limit: Option<i64>,
) -> Value {
    let mut args = vec![option("user", 6, json!(target.to_string()))];
    if let Some(limit) = limit {
        args.push(option("limit", 4, json!(limit)));
    }
    let mut v = slash_command(
        id,
        "quota-admin",
        CHANNEL,
        Some(GUILD),
        user(who, "someone"),
        perms,
        vec![subcommand(sub, args)],
        "en-US",
    );
    let name = format!("user{target}");
    v["data"]["resolved"] = json!({
        "users": { target.to_string(): user(target, &name) },
        "members": { target.to_string(): member(user(target, &name), "0") },
    });
    v
}

#[tokio::test]
async fn a_server_admin_cannot_grant_themselves_edits_and_an_operator_can() {
    let mut bot = Bot::start("per_user = 1\ndiscord:admin_ids = [99]").await;
    bot.dc.dispatch(
        "INTERACTION_CREATE",
        quota_admin(7600, 8, MANAGE_GUILD, "set", 8, Some(1_000_000)),
    );
    bot.dc.dispatch(
        "INTERACTION_CREATE",
        quota_admin(7601, 8, MANAGE_GUILD, "reset", 8, None),
    );
    let answers = bot.callbacks(2).await;
    let text = |c: &dc::Call| c.json["data"]["content"].as_str().unwrap().to_owned();
    let said: Vec<String> = answers.iter().map(text).collect();
    assert!(
        said.iter()
            .any(|t| t.contains("the bot-wide limit still applies"))
            && said
                .iter()
                .any(|t| t.contains("Only the bot's operator can reset")),
        "{said:?}"
    );
    for (i, id) in [6900u64, 6901].into_iter().enumerate() {
        let request = bot.edit_x(id, CHANNEL, user(8, "bob"), 6000 + id);
        bot.dc.dispatch("MESSAGE_CREATE", request);
        if i == 0 {
            bot.results(1).await;
        }
    }
    bot.post_containing("of your 1 edits").await;
    // An operator (discord.admin_ids) raises the limit bot-wide, without Manage Server.
    bot.dc.dispatch(
        "INTERACTION_CREATE",
        quota_admin(7602, 99, NO_PERMS, "set", 8, Some(2)),
    );
    let raised = bot.callbacks(3).await.remove(2);
    assert!(
        text(&raised).contains("User 8 may now make 2 edits per window"),
        "{}",
        text(&raised)
    );
    let request = message(
        6902,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        "/edit y",
        vec![bot.image(6902, 500, 500)],
        None,
    );
    bot.dc.dispatch("MESSAGE_CREATE", request);
    bot.results(2).await;
    bot.stop().await;
    assert_eq!((bot.used(8).await, bot.ds.calls()), (2, 2));
}

#[tokio::test]
async fn buttons_and_modals_act_only_where_they_were_pressed() {
    const SECRET: u64 = 600;
    let mut bot = Bot::start("").await;
    bot.dc.set_channel(SECRET, Some(GUILD));
    let private = message(
        6950,
        SECRET,
        Some(GUILD),
        user(7, "alice"),
        "my photo",
        vec![bot.image(6950, 500, 500)],
        None,
    );
    bot.dc.put_message(private);
    // Alice's own result, in her channel.
    let request = message(
        6951,
        CHANNEL,
        Some(GUILD),
        user(7, "alice"),
        "/edit private prompt",
        vec![bot.image(6951, 500, 500)],
        None,
    );
    bot.dc.dispatch("MESSAGE_CREATE", request);
    let result = bot.results(1).await.remove(0);
    let custom_id = result.json["components"][0]["components"][0]["custom_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !custom_id.contains("6951"),
        "no job id in the button: {custom_id}"
    );
    let downloads = bot.dc.downloads().len();
    // Bob presses a copy of her button on a message of another channel.
    let elsewhere = message(
        6952,
        SECRET,
        Some(GUILD),
        user(8, "bob"),
        "look",
        vec![],
        None,
    );
    let press = button_press(
        7700,
        SECRET,
        Some(GUILD),
        user(8, "bob"),
        NO_PERMS,
        &custom_id,
        elsewhere,
        "en-US",
    );
    bot.dc.dispatch("INTERACTION_CREATE", press);
    let refused = bot.callbacks(1).await.remove(0);
    assert!(
        refused.json["data"]["content"]
            .as_str()
            .unwrap()
            .contains("expired")
            && refused.json["data"]["flags"] == 64,
        "{}",
        refused.json
    );
    // Bob submits a modal naming the secret channel's message from the public channel.
    let forged = modal_submit(
        7701,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        NO_PERMS,
        &format!("edit:{SECRET}:6950"),
        &[("prompt", "steal it"), ("negative", "")],
        "en-US",
    );
    let token = forged["token"].as_str().unwrap().to_owned();
    bot.dc.dispatch("INTERACTION_CREATE", forged);
    let told = bot
        .dc
        .wait_for(
            "PATCH",
            &format!("/webhooks/*/{token}/messages/@original"),
            1,
            20,
        )
        .await
        .remove(0);
    assert!(
        told.json["content"].as_str().unwrap().contains("No image"),
        "{}",
        told.json
    );
    bot.stop().await;
    assert!(
        bot.dc
            .calls()
            .iter()
            .all(|c| !c.path.contains(&format!("/channels/{SECRET}/"))),
        "nothing read from or posted into the other channel"
    );
    assert_eq!(bot.dc.downloads().len(), downloads, "nothing fetched");
    assert_eq!((bot.ds.calls(), bot.used(8).await), (1, 0));
}

#[tokio::test]
async fn mentions_in_a_prompt_ping_nobody() {
    let mut bot = Bot::start("").await;
    let request = message(
        6970,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        "/edit @everyone <@&4242> @here make it night",
        vec![bot.image(6970, 500, 500)],
        None,
    );
    bot.dc.dispatch("MESSAGE_CREATE", request);
    let result = bot.results(1).await.remove(0);
    assert!(
        result.json["content"]
            .as_str()
            .unwrap()
            .contains("@everyone")
    );
    let refusal = message(
        6971,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        "/edit @everyone --bogus 1",
        vec![bot.image(6971, 500, 500)],
        None,
    );
    bot.dc.dispatch("MESSAGE_CREATE", refusal);
    bot.post_containing("--bogus").await;
    let slash = slash_edit(
        7800,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        NO_PERMS,
        vec![option("prompt", 3, json!("@everyone <@&4242> paint it"))],
        vec![],
        "en-US",
    );
    bot.dc.dispatch("INTERACTION_CREATE", slash);
    bot.results(2).await;
    bot.stop().await;
    let sent: Vec<dc::Call> = bot
        .dc
        .calls()
        .into_iter()
        .filter(|c| matches!(c.method.as_str(), "POST" | "PATCH") && c.json["content"].is_string())
        .collect();
    assert!(sent.len() >= 4, "{sent:?}");
    for c in &sent {
        let allowed = &c.json["allowed_mentions"];
        assert!(
            allowed["parse"].as_array().is_some_and(|p| p.is_empty()),
            "{} {} pings by parse: {allowed}",
            c.method,
            c.path
        );
        assert!(
            allowed["roles"].as_array().is_none_or(|r| r.is_empty()),
            "{allowed}"
        );
        let users: Vec<&str> = allowed["users"]
            .as_array()
            .map(|u| u.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(
            users.iter().all(|u| *u == "8"),
            "only the requester: {allowed}"
        );
    }
}

/// A guild text request `/edit …` with an image from `author` in `channel`, with `roles`.
fn request_in(bot: &Bot, id: u64, channel: u64, author: u64, roles: &[u64]) -> Value {
    let mut m = message(
        id,
        channel,
        Some(GUILD),
        user(author, "someone"),
        "/edit make it night",
        vec![bot.image(id + 100_000, 500, 500)],
        None,
    );
    let roles: Vec<String> = roles.iter().map(u64::to_string).collect();
    m["member"]["roles"] = json!(roles);
    m
}

/// Posts to `channel` whose content contains `needle`.
fn posts_saying(bot: &Bot, channel: u64, needle: &str) -> usize {
    bot.dc
        .calls_to("POST", &format!("/channels/{channel}/messages"))
        .iter()
        .filter(|c| {
            c.json["content"]
                .as_str()
                .is_some_and(|t| t.contains(needle))
        })
        .count()
}

#[tokio::test]
async fn in_an_unlisted_server_text_requests_get_one_answer_and_commands_an_ephemeral_one() {
    let mut bot = Bot::start("discord:allowed_guilds = [78]\ndiscord:admin_ids = [900]\n").await;
    bot.dc
        .dispatch("MESSAGE_CREATE", request_in(&bot, 8000, CHANNEL, 8, &[]));
    bot.post_containing("This bot is not enabled here.").await;
    bot.dc
        .dispatch("MESSAGE_CREATE", request_in(&bot, 8001, CHANNEL, 9, &[]));
    let slash = slash_edit(
        8100,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        NO_PERMS,
        vec![option("prompt", 3, json!("make it night"))],
        vec![],
        "en-US",
    );
    bot.dc.dispatch("INTERACTION_CREATE", slash);
    let quota = slash_command(
        8101,
        "quota",
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        NO_PERMS,
        vec![],
        "en-US",
    );
    bot.dc.dispatch("INTERACTION_CREATE", quota);
    let help = slash_command(
        8102,
        "help",
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        NO_PERMS,
        vec![],
        "en-US",
    );
    bot.dc.dispatch("INTERACTION_CREATE", help);
    let answers = bot.callbacks(3).await;
    for a in &answers {
        assert_eq!(
            (a.json["type"].as_u64(), a.json["data"]["flags"].as_u64()),
            (Some(4), Some(64))
        );
        assert_eq!(a.json["data"]["content"], "This bot is not enabled here.");
    }
    // The operator is served there.
    bot.dc
        .dispatch("MESSAGE_CREATE", request_in(&bot, 8002, CHANNEL, 900, &[]));
    bot.results(1).await;
    bot.stop().await;
    assert_eq!(posts_saying(&bot, CHANNEL, "not enabled"), 1);
    assert_eq!(bot.ds.calls(), 1);
    assert_eq!(
        (bot.used(8).await, bot.used(9).await, bot.used(900).await),
        (0, 0, 1)
    );
    // No job: no ⏳ on the refused requests.
    assert!(bot.dc.reactions().iter().all(|r| r.message_id == 8002));
}

#[tokio::test]
async fn unlisted_channels_members_without_a_role_and_closed_dms_take_no_job() {
    let mut bot = Bot::start(
        "discord:allowed_channels = [500]\ndiscord:allowed_roles = [42]\ndiscord:direct_messages = false\n",
    )
    .await;
    // Another channel of the server.
    bot.dc.set_channel(501, Some(GUILD));
    bot.dc
        .dispatch("MESSAGE_CREATE", request_in(&bot, 8200, 501, 8, &[42]));
    for _ in 0..500 {
        if posts_saying(&bot, 501, "not enabled here") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(posts_saying(&bot, 501, "This bot is not enabled here."), 1);
    // The right channel, without the role.
    bot.dc
        .dispatch("MESSAGE_CREATE", request_in(&bot, 8201, CHANNEL, 9, &[7]));
    bot.post_containing("only for members with certain roles")
        .await;
    // A DM.
    bot.dc.set_channel(600, None);
    let dm = message(
        8202,
        600,
        None,
        user(10, "carol"),
        "/edit make it night",
        vec![bot.image(8302, 500, 500)],
        None,
    );
    bot.dc.dispatch("MESSAGE_CREATE", dm);
    let slash_dm = slash_edit(
        8203,
        600,
        None,
        user(10, "carol"),
        NO_PERMS,
        vec![option("prompt", 3, json!("x"))],
        vec![],
        "en-US",
    );
    bot.dc.dispatch("INTERACTION_CREATE", slash_dm);
    let answer = bot.callbacks(1).await.remove(0);
    assert_eq!(answer.json["data"]["flags"], 64);
    assert!(
        answer.json["data"]["content"]
            .as_str()
            .unwrap()
            .contains("private chats")
    );
    for _ in 0..500 {
        if posts_saying(&bot, 600, "private chats") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // With the role, in the listed channel: served.
    bot.dc
        .dispatch("MESSAGE_CREATE", request_in(&bot, 8204, CHANNEL, 11, &[42]));
    bot.results(1).await;
    bot.stop().await;
    assert_eq!(
        posts_saying(&bot, 600, "does not take requests in private chats"),
        1
    );
    assert_eq!(bot.ds.calls(), 1);
    assert_eq!(
        (
            bot.used(8).await,
            bot.used(9).await,
            bot.used(10).await,
            bot.used(11).await
        ),
        (0, 0, 0, 1)
    );
}

#[tokio::test]
async fn the_slash_size_option_reaches_the_backend() {
    let mut bot = Bot::start("").await;
    let with_size = slash_edit(
        8400,
        CHANNEL,
        Some(GUILD),
        user(8, "bob"),
        NO_PERMS,
        vec![
            option("prompt", 3, json!("make it night")),
            option("size", 3, json!("1536*1024")),
            option("image", 11, json!("8401")),
        ],
        vec![bot.image(8401, 500, 500)],
        "en-US",
    );
    bot.dc.dispatch("INTERACTION_CREATE", with_size);
    bot.results(1).await;
    bot.stop().await;
    assert_eq!(bot.ds.seen()[0].body["parameters"]["size"], "1536*1024");
    let edit = bot
        .dc
        .commands()
        .into_iter()
        .find(|c| c["name"] == "edit")
        .unwrap();
    assert!(edit["options"].to_string().contains("\"size\""));
}

#[tokio::test]
async fn with_leave_unlisted_the_bot_leaves_servers_that_are_not_allowed() {
    let mut bot =
        Bot::start("discord:allowed_guilds = [77]\ndiscord:leave_unlisted = true\n").await;
    bot.dc.dispatch("GUILD_CREATE", dc::guild_create(79));
    bot.dc.dispatch("GUILD_CREATE", dc::guild_create(GUILD));
    bot.dc
        .wait_for("DELETE", "/users/@me/guilds/*", 1, 20)
        .await;
    // The listed server is served.
    bot.dc
        .dispatch("MESSAGE_CREATE", request_in(&bot, 8500, CHANNEL, 8, &[]));
    bot.results(1).await;
    bot.stop().await;
    let left: Vec<String> = bot
        .dc
        .calls_to("DELETE", "/users/@me/guilds/*")
        .iter()
        .map(|c| c.path.clone())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with("/guilds/79"), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_users_in_one_channel_get_every_result_within_its_limit_and_no_429() {
    // A channel's limit ten times faster: 5 messages in any 0.5 s (Discord: 5 in 5 s).
    let per = Duration::from_millis(500);
    let mut bot = Bot::start("per_user = 5\ndiscord:limit_per_channel = \"5/0.5s\"\n").await;
    bot.dc.limit_channels(5, per);
    let started = std::time::Instant::now();
    for u in 0..30u64 {
        let m = bot.edit_x(7100 + u, CHANNEL, user(300 + u, "u"), 8100 + u);
        bot.dc.dispatch("MESSAGE_CREATE", m);
    }
    let results = bot.results(30).await;
    let elapsed = started.elapsed();
    let mut targets: Vec<u64> = results.iter().filter_map(replied_to).collect();
    targets.sort();
    assert_eq!(
        targets,
        (7100..7130).collect::<Vec<_>>(),
        "each request its result"
    );
    bot.stop().await;
    assert_eq!(bot.dc.throttled(), 0, "no 429 from Discord");
    let messages = bot
        .dc
        .calls_to("POST", &format!("/channels/{CHANNEL}/messages"))
        .len()
        + bot
            .dc
            .calls_to("PATCH", &format!("/channels/{CHANNEL}/messages/*"))
            .len();
    assert_eq!(
        messages, 60,
        "a placeholder and a result each, no status edit"
    );
    // The n-th message can go no sooner than (n / 5) windows after the first.
    let bound = per * ((messages as u32 - 1) / 5);
    println!(
        "30 users in one channel: {messages} messages in {elapsed:?}; the limit allows {bound:?} at best"
    );
    assert!(
        elapsed <= bound.mul_f64(1.1) + Duration::from_millis(500),
        "{elapsed:?} for what the limit allows in {bound:?}"
    );
}

#[tokio::test]
async fn a_result_after_the_interactions_15_minutes_goes_into_its_answer_as_a_channel_message() {
    let mut bot = Bot::start("").await;
    bot.ds.hold();
    let cmd = bot.slash_night(7050, 5250);
    let token = cmd["token"].as_str().unwrap().to_owned();
    bot.dc.dispatch("INTERACTION_CREATE", cmd);
    let original = format!("/webhooks/*/{token}/messages/@original");
    bot.dc.wait_for("PATCH", &original, 1, 20).await;
    let answer = bot.dc.original_of(&token).expect("the deferred answer");
    // The model takes longer than the token lives.
    bot.dc.expire_token(&token);
    bot.ds.release();
    let result = bot.results(1).await.remove(0);
    assert_eq!(
        result.path,
        format!("/api/v10/channels/{CHANNEL}/messages/{answer}"),
        "the answer edited as the channel message it is"
    );
    assert_eq!(images::dims(&uploaded(&result)).1, 64);
    let shown = bot.dc.message(answer).unwrap();
    assert_eq!(shown["attachments"].as_array().map(Vec::len), Some(1));
    assert!(shown["components"].to_string().contains("again:"));
    assert!(shown["content"].as_str().unwrap().contains("make it night"));
    bot.stop().await;
    assert_eq!(bot.used(8).await, 1);
}
