//! A recording [`Chat`]: every call the core makes is kept as a [`Call`] value, inputs are
//! served from memory, the next call of a kind can be made to fail, and results and failure
//! texts can be held back (to look at the store in between, or to play a crash before the user
//! was answered).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use qwen_edit_bot::core::model::{Platform, Reply};
use qwen_edit_bot::core::ports::BoxFuture;
use qwen_edit_bot::core::ports::chat::{
    Chat, ChatError, ChatStyle, Hold, Mark, Placeholder, Posted, ResultPost, Shown,
};
use tokio::sync::watch;

/// One call the core made.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Fetch(String),
    Mark(Option<i64>, Mark),
    Say(String),
    Edit(Shown, String),
    /// A placeholder posted for a job (as message `message`), replying to `to`.
    Hold {
        job: String,
        to: Option<i64>,
        input: Option<String>,
        n: u8,
        text: String,
        message: i64,
    },
    /// A placeholder's text changed.
    Show(i64, String),
    /// A placeholder turned into a failure text.
    Fail(i64, String),
    /// A result put into the placeholder `message`.
    Post {
        job: String,
        to: Option<i64>,
        images: Vec<Bytes>,
        caption: String,
        /// The 🔁 token of the button.
        again: Option<String>,
        /// The placeholder the result was put into.
        message: i64,
    },
}

impl Call {
    fn kind(&self) -> &'static str {
        match self {
            Call::Fetch(_) => "fetch",
            Call::Mark(..) => "mark",
            Call::Say(_) => "say",
            Call::Edit(..) => "edit",
            Call::Hold { .. } => "hold",
            Call::Show(..) => "show",
            Call::Fail(..) => "fail",
            Call::Post { .. } => "post",
        }
    }
}

pub struct RecordingChat {
    platform: Platform,
    calls: Mutex<Vec<Call>>,
    changed: watch::Sender<usize>,
    files: Mutex<HashMap<String, Bytes>>,
    failures: Mutex<VecDeque<(&'static str, ChatError)>>,
    /// While true, posts and says wait.
    held: watch::Sender<bool>,
    next_message: AtomicI64,
    upload_limit: Mutex<Option<u64>>,
}

impl RecordingChat {
    pub fn new(platform: Platform) -> Self {
        Self {
            platform,
            calls: Mutex::default(),
            changed: watch::channel(0).0,
            files: Mutex::default(),
            failures: Mutex::default(),
            held: watch::channel(false).0,
            next_message: AtomicI64::new(1000),
            upload_limit: Mutex::new(None),
        }
    }

    pub fn put_file(&self, input: &str, bytes: impl Into<Bytes>) {
        self.files
            .lock()
            .unwrap()
            .insert(input.into(), bytes.into());
    }

    /// The next call of `kind` ("post", "say", "mark", …) fails with `error`.
    pub fn fail_next(&self, kind: &'static str, error: ChatError) {
        self.failures.lock().unwrap().push_back((kind, error));
    }

    /// Results and failure texts wait until [`RecordingChat::release`].
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    pub fn release(&self) {
        self.held.send_replace(false);
    }

    pub fn set_upload_limit(&self, limit: Option<u64>) {
        *self.upload_limit.lock().unwrap() = limit;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls so far, without fetches.
    pub fn answers(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| !matches!(c, Call::Fetch(_)))
            .collect()
    }

    /// Waits (20 s at most) until `n` calls match `which`; returns them.
    pub async fn wait_for(&self, n: usize, which: impl Fn(&Call) -> bool) -> Vec<Call> {
        let mut changed = self.changed.subscribe();
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let found: Vec<Call> = self.calls().into_iter().filter(|c| which(c)).collect();
                if found.len() >= n {
                    return found;
                }
                let _ = changed.changed().await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("{n} matching calls; got {:#?}", self.calls()))
    }

    /// Waits for the `n` first results posted.
    pub async fn posts(&self, n: usize) -> Vec<Call> {
        self.wait_for(n, |c| matches!(c, Call::Post { .. })).await
    }

    /// Waits for the `n` first texts said.
    pub async fn said(&self, n: usize) -> Vec<String> {
        let said = self.wait_for(n, |c| matches!(c, Call::Say(_))).await;
        said.into_iter()
            .filter_map(|c| match c {
                Call::Say(text) => Some(text),
                _ => None,
            })
            .collect()
    }

    /// Waits for the `n` first placeholders turned into failure texts; returns the texts.
    pub async fn failed(&self, n: usize) -> Vec<String> {
        let failed = self.wait_for(n, |c| matches!(c, Call::Fail(..))).await;
        failed
            .into_iter()
            .filter_map(|c| match c {
                Call::Fail(_, text) => Some(text),
                _ => None,
            })
            .collect()
    }

    async fn record(&self, call: Call) -> Result<(), ChatError> {
        let kind = call.kind();
        if matches!(kind, "post" | "say" | "fail") {
            let mut held = self.held.subscribe();
            let _ = held.wait_for(|h| !*h).await;
        }
        self.calls.lock().unwrap().push(call);
        self.changed.send_modify(|n| *n += 1);
        let mut failures = self.failures.lock().unwrap();
        match failures.iter().position(|(k, _)| *k == kind) {
            Some(i) => Err(failures.remove(i).unwrap().1),
            None => Ok(()),
        }
    }

    fn message_id(&self) -> i64 {
        self.next_message.fetch_add(1, Ordering::SeqCst)
    }
}

impl Chat for RecordingChat {
    fn platform(&self) -> Platform {
        self.platform
    }

    fn style(&self) -> ChatStyle {
        ChatStyle {
            eta: false,
            time: qwen_edit_bot::messages::when,
            mention: str::to_owned,
        }
    }

    fn fetch<'a>(&'a self, input: &'a str) -> BoxFuture<'a, Result<Bytes, String>> {
        Box::pin(async move {
            self.record(Call::Fetch(input.into()))
                .await
                .map_err(|e| e.to_string())?;
            let found = self.files.lock().unwrap().get(input).cloned();
            found.ok_or_else(|| format!("no file {input}"))
        })
    }

    fn mark<'a>(&'a self, to: &'a Reply, mark: Mark) -> BoxFuture<'a, Result<(), ChatError>> {
        Box::pin(self.record(Call::Mark(to.to, mark)))
    }

    fn say<'a>(&'a self, _to: &'a Reply, text: &'a str) -> BoxFuture<'a, Result<i64, ChatError>> {
        Box::pin(async move {
            self.record(Call::Say(text.into())).await?;
            Ok(self.message_id())
        })
    }

    fn edit<'a>(
        &'a self,
        _to: &'a Reply,
        shown: Shown,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), ChatError>> {
        Box::pin(self.record(Call::Edit(shown, text.into())))
    }

    fn upload_limit<'a>(&'a self, _to: &'a Reply) -> BoxFuture<'a, Option<u64>> {
        let limit = *self.upload_limit.lock().unwrap();
        Box::pin(async move { limit })
    }

    fn hold<'a>(
        &'a self,
        to: &'a Reply,
        hold: &'a Hold<'a>,
    ) -> BoxFuture<'a, Result<Placeholder, ChatError>> {
        Box::pin(async move {
            let message = self.message_id();
            let call = Call::Hold {
                job: hold.job_id.to_owned(),
                to: to.to,
                input: hold.input.map(str::to_owned),
                n: hold.n,
                text: hold.text.to_owned(),
                message,
            };
            self.record(call).await?;
            Ok(Placeholder {
                images: vec![message],
                caption: None,
                files: false,
            })
        })
    }

    fn show<'a>(
        &'a self,
        _to: &'a Reply,
        placeholder: &'a Placeholder,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), ChatError>> {
        Box::pin(self.record(Call::Show(placeholder.images[0], text.into())))
    }

    fn fill<'a>(
        &'a self,
        to: &'a Reply,
        placeholder: &'a Placeholder,
        result: &'a ResultPost,
    ) -> BoxFuture<'a, Result<Posted, ChatError>> {
        Box::pin(async move {
            let message = placeholder.images[0];
            let call = Call::Post {
                job: result.job_id.clone(),
                to: to.to,
                images: result.images.iter().map(|i| i.bytes.clone()).collect(),
                caption: result.caption.clone(),
                again: result.again.clone(),
                message,
            };
            self.record(call).await?;
            Ok(Posted {
                button_at: Some(message),
            })
        })
    }

    fn fail<'a>(
        &'a self,
        _to: &'a Reply,
        placeholder: &'a Placeholder,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), ChatError>> {
        Box::pin(self.record(Call::Fail(placeholder.images[0], text.into())))
    }
}
