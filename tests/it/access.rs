//! Where the bot answers (`core::access`): the rules on their own, the hourly refusal on
//! injected time, and the store's list with the change stamp admin commands leave.

use std::time::Duration;

use qwen_edit_bot::core::access::{Access, Closed, DiscordPlaces, Spot, TelegramPlaces};
use qwen_edit_bot::core::model::Platform;
use qwen_edit_bot::core::ports::store::Store;
use qwen_edit_bot::store::sqlite::SqliteStore;

fn tg(chat: i64, private: bool, user: i64) -> Spot<'static> {
    Spot::Telegram {
        chat,
        private,
        user,
    }
}

fn rules() -> Access {
    Access::new(
        TelegramPlaces {
            allowed_chats: vec![-100],
            private_chats: false,
            leave_unlisted: false,
            operators: vec![1],
        },
        DiscordPlaces {
            allowed_guilds: vec![77],
            allowed_channels: vec![500],
            allowed_roles: vec![9],
            direct_messages: false,
            leave_unlisted: true,
            operators: vec![2],
        },
    )
}

#[test]
fn telegram_groups_must_be_listed_and_private_chats_can_be_turned_off() {
    let a = rules();
    assert_eq!(a.check(tg(-100, false, 5)), Ok(()));
    assert_eq!(a.check(tg(-200, false, 5)), Err(Closed::Place));
    assert_eq!(a.check(tg(5, true, 5)), Err(Closed::Private));
    // The operator anywhere; a listed private chat even with private chats off.
    assert_eq!(a.check(tg(-200, false, 1)), Ok(()));
    assert_eq!(a.check(tg(1, true, 1)), Ok(()));
    a.set_stored(&[(Platform::Telegram, "5".into())]);
    assert_eq!(a.check(tg(5, true, 5)), Ok(()));
    // Nothing listed anywhere: every group.
    let open = Access::open();
    assert_eq!(open.check(tg(-300, false, 5)), Ok(()));
    assert_eq!(open.check(tg(5, true, 5)), Ok(()));
    // A list that only the store has restricts too.
    open.set_stored(&[(Platform::Telegram, "-300".into())]);
    assert_eq!(open.check(tg(-301, false, 5)), Err(Closed::Place));
    assert_eq!(open.check(tg(-300, false, 5)), Ok(()));
}

#[test]
fn discord_needs_a_listed_server_channel_and_role_and_dms_can_be_turned_off() {
    let a = rules();
    let dc = |guild: Option<u64>, channel: u64, roles: &'static [u64], user: u64| Spot::Discord {
        guild,
        channel,
        roles,
        user,
    };
    assert_eq!(a.check(dc(Some(77), 500, &[9], 5)), Ok(()));
    assert_eq!(a.check(dc(Some(78), 500, &[9], 5)), Err(Closed::Place));
    assert_eq!(a.check(dc(Some(77), 501, &[9], 5)), Err(Closed::Channel));
    assert_eq!(a.check(dc(Some(77), 500, &[8], 5)), Err(Closed::Role));
    assert_eq!(a.check(dc(None, 600, &[], 5)), Err(Closed::Private));
    assert_eq!(a.check(dc(None, 600, &[], 2)), Ok(()));
    assert_eq!(a.check(dc(Some(78), 501, &[], 2)), Ok(()));
    assert!(!a.server_listed(78));
    a.set_stored(&[(Platform::Discord, "78".into())]);
    assert!(a.server_listed(78));
    assert!(a.leaves_unlisted(Platform::Discord));
    assert!(!a.leaves_unlisted(Platform::Telegram));
}

#[test]
fn a_place_gets_one_refusal_an_hour() {
    let a = rules();
    let t0 = tokio::time::Instant::now();
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    assert!(a.answer_refusal_at(tg(-200, false, 5), at(0)));
    assert!(
        !a.answer_refusal_at(tg(-200, false, 6), at(1)),
        "another user, same chat"
    );
    assert!(
        a.answer_refusal_at(tg(-201, false, 5), at(1)),
        "another chat"
    );
    assert!(!a.answer_refusal_at(tg(-200, false, 5), at(3599)));
    assert!(a.answer_refusal_at(tg(-200, false, 5), at(3600)));
    assert!(!a.answer_refusal_at(tg(-200, false, 5), at(3601)));
}

#[tokio::test]
async fn the_store_keeps_allowed_places_and_admin_commands_stamp_their_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.sqlite3");
    let database = path.to_str().unwrap();
    let daemon = SqliteStore::open(&path).unwrap();
    let cli = SqliteStore::open(&path).unwrap();
    assert!(
        cli.set_allowed(Platform::Telegram, "-100", true)
            .await
            .unwrap()
    );
    assert!(
        !cli.set_allowed(Platform::Telegram, "-100", true)
            .await
            .unwrap()
    );
    assert!(
        cli.set_allowed(Platform::Discord, "77", true)
            .await
            .unwrap()
    );
    daemon
        .set_allowed(Platform::Discord, "78", true)
        .await
        .unwrap();
    // In the store's order: by platform name, then place.
    assert_eq!(
        daemon.allowed_places().await.unwrap(),
        vec![
            (Platform::Discord, "77".to_string()),
            (Platform::Discord, "78".to_string()),
            (Platform::Telegram, "-100".to_string()),
        ]
    );
    assert!(
        cli.set_allowed(Platform::Discord, "77", false)
            .await
            .unwrap()
    );
    assert!(
        !cli.set_allowed(Platform::Discord, "77", false)
            .await
            .unwrap()
    );
    assert_eq!(daemon.allowed_places().await.unwrap().len(), 2);
    // The stamp a running daemon looks at: absent, then moved by every change.
    assert_eq!(qwen_edit_bot::store::stamp_of(database), None);
    qwen_edit_bot::store::mark_changed(database).await;
    let first = qwen_edit_bot::store::stamp_of(database).expect("stamped");
    assert!(qwen_edit_bot::store::change_stamp(database).ends_with("q.sqlite3.changed"));
    qwen_edit_bot::store::mark_changed(database).await;
    assert_ne!(qwen_edit_bot::store::stamp_of(database), Some(first));
}
