//! Refusals are answered once, not once per message: a user who sends 300 image-less `/edit`s
//! gets one reply (a different mistake gets its own), and a group gets at most a few per window,
//! so a flood cannot spend the chat's send budget (Telegram: about 20 messages a minute in a
//! group) that real results need.

use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

/// How long a refusal silences the next ones of the same user in the same chat.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// Most refusals one group gets per window, whoever causes them.
pub const REFUSALS_PER_GROUP: u32 = 5;
/// Entries kept before old ones are dropped (bounds memory under a flood of senders).
const MAX_ENTRIES: usize = 10_000;

/// Decides which refusals are answered.
#[derive(Default)]
pub struct RefusalThrottle {
    /// (chat, user, refusal) → when it was last answered.
    users: DashMap<(String, String, String), Instant>,
    /// chat → (start of its window, refusals answered in it).
    chats: DashMap<String, (Instant, u32)>,
}

impl RefusalThrottle {
    /// Whether refusal `what` to `user` in `chat` (a group when `group`) is answered now (and
    /// counted).
    pub fn allow(&self, chat: &str, group: bool, user: &str, what: &str) -> bool {
        let now = Instant::now();
        self.prune(now);
        let key = (chat.to_owned(), user.to_owned(), what.to_owned());
        if self
            .users
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < REFUSAL_WINDOW)
        {
            return false;
        }
        if group {
            let mut slot = self.chats.entry(chat.to_owned()).or_insert((now, 0));
            if now.duration_since(slot.0) >= REFUSAL_WINDOW {
                *slot = (now, 0);
            }
            if slot.1 >= REFUSALS_PER_GROUP {
                return false;
            }
            slot.1 += 1;
        }
        self.users.insert(key, now);
        true
    }

    fn prune(&self, now: Instant) {
        if self.users.len() > MAX_ENTRIES {
            self.users
                .retain(|_, at| now.duration_since(*at) < REFUSAL_WINDOW);
        }
        if self.chats.len() > MAX_ENTRIES {
            self.chats
                .retain(|_, (start, _)| now.duration_since(*start) < REFUSAL_WINDOW);
        }
    }
}
